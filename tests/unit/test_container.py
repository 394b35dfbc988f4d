"""The container images, checked without a Docker daemon: everything the Dockerfiles COPY exists (and is not
excluded by .dockerignore), the package installs the extras they name, and the KubeRay manifests run the image
that deploy/images.sh builds, with a config path that exists inside it."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "Dockerfile.gpu"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for parts in (line.strip().split(None, 1) for line in text.splitlines() if line.strip())]


def copies(path: Path) -> list[tuple[list[str], str]]:
    out = []
    for op, args in instructions(path):
        if op == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            out.append((words[:-1], words[-1]))
    return out


def ignored(rel: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p.rstrip("/") + "/") for p in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_copied_exists_in_the_build_context(dockerfile):
    found = copies(dockerfile)
    assert found
    for sources, _ in found:
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
            assert not ignored(src), f"{dockerfile.name}: COPY {src}: excluded by .dockerignore"
    copied = {s for sources, _ in found for s in sources}
    # what `pip install .` needs: the project file, its readme, and every package folder of package-dir
    assert {"pyproject.toml", "README.md", *PYPROJECT["tool"]["setuptools"]["package-dir"].values()} <= copied


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_extras_installed_exist(dockerfile):
    extras = PYPROJECT["project"]["optional-dependencies"]
    installs = [args for op, args in instructions(dockerfile) if op == "RUN" and "pip install" in args]
    named = {e for args in installs for group in re.findall(r"'\.\[([a-z,]+)\]'",
                                                            args) for e in group.split(",")}
    assert named and named <= set(extras)
    assert ("gpu" in named) == dockerfile.name.endswith(".gpu")
    base = next(args for op, args in instructions(dockerfile) if op == "FROM")
    assert (base.startswith("nvidia/cuda:") if dockerfile.name.endswith(".gpu")
            else base.startswith("python:3.11"))


def built_tags() -> dict[str, str]:
    """Dockerfile → tag, as deploy/images.sh builds them with its defaults."""
    script = (ROOT / "deploy" / "images.sh").read_text()
    assert 'IMAGE=${IMAGE:-alignray/alignray}' in script
    builds = re.findall(r'docker build -f (\S+) -t "\$IMAGE:\$VERSION([^"]*)" \.', script)
    return {path: f"alignray/alignray:{VERSION}{suffix}" for path, suffix in builds}


def test_images_script_builds_both_dockerfiles():
    assert built_tags() == {"deploy/Dockerfile": f"alignray/alignray:{VERSION}",
                            "deploy/Dockerfile.gpu": f"alignray/alignray:{VERSION}-gpu"}


def _images(tree) -> list[str]:
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == "image"] + [i for v in tree.values() for i in _images(v)]
    if isinstance(tree, list):
        return [i for v in tree for i in _images(v)]
    return []


@pytest.mark.parametrize("manifest", sorted((ROOT / "deploy" / "kuberay").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_kuberay_manifests_run_the_gpu_image_we_build(manifest):
    images = _images(yaml.safe_load(manifest.read_text()))
    assert images and set(images) == {built_tags()["deploy/Dockerfile.gpu"]}


def test_rayjob_config_path_is_inside_the_image():
    entry = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())["spec"]["entrypoint"]
    config = Path(shlex.split(entry)[shlex.split(entry).index("--config") + 1])
    workdir = next(args for op, args in instructions(DOCKERFILES[1]) if op == "WORKDIR")
    rel = config.relative_to(workdir)
    assert any(str(rel).startswith(dest.rstrip("/") + "/") or str(rel) == dest
               for _, dest in copies(DOCKERFILES[1])), f"{config} is not copied into the image"
    assert (ROOT / rel).is_file()
