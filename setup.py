"""Package discovery for the product's folder layout: `system/` installs as `alignray`, `actors/` as
`alignray.actors` (nothing under a generic top-level name). setuptools finds the subpackages; all other
metadata is in pyproject.toml."""

from setuptools import find_packages, setup


def packages(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(packages=packages("alignray", "system") + packages("alignray.actors", "actors"))
