"""The house rules that keep the code easy to read, checked on the tree: no import cycles (imports inside
functions count), Ray only where actors are driven, both pools implement the Pool protocol, the library
patches apply whatever the import order."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVES_ACTORS = {"alignray.driver.controller", "alignray.driver.shards", "alignray.driver.scaling",
                 "alignray.driver.run_commands", "alignray.rm.run"}
"""The parts of system/ that drive actors: the only ones that may import ray."""


def module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "actors"):
        parts = ["alignray", "actors", *path.relative_to(ROOT / "actors").with_suffix("").parts]
    else:
        parts = ["alignray", *path.relative_to(ROOT / "system").with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    paths = [*(ROOT / "system").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_counting_imports_inside_functions():
    assert cycles(graph()) == []


def test_only_the_parts_that_drive_actors_import_ray():
    paths = [p for p in (ROOT / "system").rglob("*.py")]
    with_ray = {module_name(p) for p in paths
                if any(i == "ray" or i.startswith("ray.") for i in imports_of(p))}
    assert with_ray <= DRIVES_ACTORS, sorted(with_ray - DRIVES_ACTORS)


def test_both_pools_implement_the_pool_protocol():
    from alignray.actors.groups import RankPool
    from alignray.actors.pool import Pool, WorkerPool

    wanted = {n for n in vars(Pool) if not n.startswith("_")} | set(Pool.__annotations__)
    for cls in (WorkerPool, RankPool):
        init = ast.parse(textwrap.dedent(inspect.getsource(cls.__init__)))
        assigned = {node.attr for node in ast.walk(init) if isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store) and isinstance(node.value,
                                                                       ast.Name) and node.value.id == "self"}
        provided = {n for n in wanted if hasattr(cls, n) or n in assigned}
        assert provided == wanted, (cls.__name__, sorted(wanted - provided))


def test_library_patches_apply_whatever_the_import_order():
    """deepspeed and transformers imported before alignray's own modules: MLflow stays out of DeepSpeed's
    import, scikit-learn out of transformers', and DeepSpeed's Muon module does not pull in torch's
    inductor."""
    code = """
import sys
import textwrap
import alignray
import deepspeed
from transformers import AutoModelForCausalLM
inductor = {m for m in sys.modules if m.startswith("torch._inductor")}
import deepspeed.runtime.zero.muon.muon_optimizer
print("mlflow" in sys.modules, "sklearn" in sys.modules,
      {m for m in sys.modules if m.startswith("torch._inductor")} - inductor)
import mlflow  # a later import works as usual (train.loggers: [mlflow])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert out.stdout.split("\n")[-2] == "False False set()", out.stdout
