"""The wheel installs `alignray` (from `system/`) and `alignray.actors` (from `actors/`), nothing generic."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    """A new subpackage under system/ or actors/ must be added to pyproject, or the wheel silently lacks it."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"alignray." + ".".join(p.parent.relative_to(ROOT / "system").parts) if p.parent != ROOT / "system"
             else "alignray" for p in (ROOT / "system").rglob("__init__.py")}
    found |= {"alignray.actors" + "".join("." + part for part in p.parent.relative_to(ROOT / "actors").parts)
              for p in (ROOT / "actors").rglob("__init__.py")}
    assert found == listed


def test_import_alignray_works_outside_the_checkout_and_system_does_not(tmp_path):
    """From a folder that is not the checkout, as a user's script or a Ray worker would import it."""
    code = ("import importlib.util, alignray, alignray.actors.groups, alignray.rewards.bench;"
            "print(importlib.util.find_spec('system') is None, importlib.util.find_spec('actors') is None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_a_users_own_system_folder_does_not_shadow_alignray(tmp_path):
    (tmp_path / "system").mkdir()
    (tmp_path / "system" / "__init__.py").write_text("raise ImportError('the user package')\n")
    code = "import alignray.config; print(alignray.config.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).is_relative_to(ROOT / "system")
