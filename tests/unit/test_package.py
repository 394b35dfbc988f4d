"""The wheel installs `alignray` (from `system/`) and `alignray.actors` (from `actors/`), nothing generic."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_every_module_and_the_presets(tmp_path):
    """setup.py finds the packages: a new subpackage (a folder with __init__.py) is in the wheel without a
    list to keep; a folder of modules without __init__.py would be silently missing, so this builds the wheel
    and looks."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("alignray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"alignray/" + str(p.relative_to(ROOT / "system")) for p in (ROOT / "system").rglob("*.py")}
    expected |= {"alignray/actors/" + str(p.relative_to(ROOT / "actors"))
                 for p in (ROOT / "actors").rglob("*.py")}
    expected |= {"alignray/presets/quickstart.yaml", "alignray/presets/rm-quickstart.yaml"}
    assert not expected - names, sorted(expected - names)
    assert not {n for n in names if n.endswith(".py") and not n.startswith("alignray/")}


def test_import_alignray_works_outside_the_checkout_and_system_does_not(tmp_path):
    """From a folder that is not the checkout, as a user's script or a Ray worker would import it."""
    code = ("import importlib.util, alignray, alignray.actors.groups;"
            "print(importlib.util.find_spec('system') is None, importlib.util.find_spec('actors') is None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "True"]


def test_a_users_own_system_folder_does_not_shadow_alignray(tmp_path):
    (tmp_path / "system").mkdir()
    (tmp_path / "system" / "__init__.py").write_text("raise ImportError('the user package')\n")
    code = "import alignray.config; print(alignray.config.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert Path(out.stdout.strip()).is_relative_to(ROOT / "system")
