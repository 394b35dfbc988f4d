"""The README is the door: its map names every module where it lives, its links lead somewhere, its commands
parse and its config keys exist; docs/benchmarks.md lists every benchmark script. So none of it can go stale
unnoticed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FOLDERS = {"system/": ROOT / "system", "actors/": ROOT / "actors",
           **{f"system/{d.name}/": d for d in sorted((ROOT / "system").iterdir())
              if (d / "__init__.py").exists() and any(p.stem != "__init__" for p in d.glob("*.py"))}}
"""Every package folder with modules: a new one must get its row in the map."""


def map_rows() -> dict[str, str]:
    """folder → the text of its row in the README's map."""
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\| `([\w/]+/)`(?: → `[\w.]+`)? \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 300


def test_every_module_is_in_the_map_under_its_folder_and_every_named_module_exists():
    rows = map_rows()
    assert set(FOLDERS) <= set(rows), sorted(set(FOLDERS) - set(rows))
    for folder, path in FOLDERS.items():
        modules = {p.stem for p in path.glob("*.py") if p.stem != "__init__"}
        named = set(re.findall(r"`([a-z_]+)`", rows[folder]))
        assert modules <= named, (folder, sorted(modules - named))
        # a name the row lists as a module (`name` followed by a description or a comma) must exist
        listed = set(re.findall(r"`([a-z_]+)`(?: \*\(Ray\)\*)? (?:\(|\+|,)", rows[folder]))
        assert listed <= modules, (folder, sorted(listed - modules))


def test_links_lead_to_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / target).exists(), target


def test_every_benchmark_script_is_described():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert f"benchmarks/{script.name}" in text, script.name
    import rm_bench

    described = (ROOT / "docs" / "reward-models.md").read_text()
    for name in rm_bench.BENCHMARKS:
        assert name in described, name


def readme_commands() -> list[list[str]]:
    """Each `alignray ...` line of the README's code blocks, as argv (comments and `[optional]` parts
    dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if "alignray " not in line or line.startswith("bash "):
                continue
            line = line[line.index("alignray ") + len("alignray "):]
            line = re.sub(r"\[[^\]]*\]", "", line)
            commands.append(shlex.split(line))
    return commands


@pytest.mark.parametrize("argv", readme_commands(), ids=" ".join)
def test_every_readme_command_parses(argv):
    from alignray.cli import build_parser

    argv = [{"F": "run.yaml", "DIR": "runs/x", "RUN_DIR": "runs/x", "FILE": "d.jsonl", "NAME": "length-bias"}
            .get(a, a) for a in argv if a != "..."]
    build_parser().parse_args(argv)


def test_every_config_key_in_the_readme_exists():
    from alignray.config import Config

    rows = re.findall(r"^\| `(\w+)` \| (.*) \|$", README, re.M)
    assert [section for section, _ in rows] == list(Config.model_fields)
    for section, fields in rows:
        model = Config.model_fields[section].annotation
        for key in re.findall(r"(?:^|, )`(\w+)", fields):
            assert key in model.model_fields, f"{section}.{key}"
