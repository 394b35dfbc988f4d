"""Library patches, all in one place, installed once per process (`import alignray` installs them) and
independent of import order: each applies when its library module is imported, whichever module imports it
first.

- transformers imports scikit-learn (≈1.5 s of CPU in every process that builds a model or an Auto class) only
  for assisted generation's candidate filtering, which alignray never uses: `is_sklearn_available` answers
  False.
- DeepSpeed's autotuner imports MLflow only to log autotuning, which alignray never runs: MLflow is kept out
  while DeepSpeed imports (a later `import mlflow`, e.g. `train.loggers: [mlflow]`, works as usual).
- DeepSpeed's Muon optimizer module `torch.compile`s its kernels on import, which pulls in inductor (≈1.6 s of
  CPU per rank, on the critical path, during ZeRO's sanity check) for an optimizer alignray never uses (its
  optimizer is AdamW): it is imported uncompiled; Muon would still run correctly (eagerly) if anything used
  it.
Together ≈ 3 s of CPU less per learner rank at start-up, when every rank imports at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType


@contextmanager
def absent(*modules: str) -> Iterator[None]:
    """Inside the block `import m` raises ImportError for each module not yet imported. Restored
    afterwards."""
    blocked = [m for m in modules if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for m in blocked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]


@contextmanager
def uncompiled() -> Iterator[None]:
    """DeepSpeed's `compiler.compile()` decorator as the identity inside the block."""
    from deepspeed.runtime import compiler

    compile_ = compiler.compile
    compiler.compile = lambda *args, **kwargs: (lambda fn: fn)
    try:
        yield
    finally:
        compiler.compile = compile_


def _no_sklearn(utils: ModuleType) -> None:
    utils.is_sklearn_available = lambda: False


AROUND: dict[str, Callable[[], AbstractContextManager]] = {
    "deepspeed": lambda: absent("mlflow"),
    "deepspeed.runtime.zero.muon.muon_optimizer": uncompiled,
}
"""module → a context its own import runs inside."""
AFTER: dict[str, Callable[[ModuleType], None]] = {"transformers.utils": _no_sklearn}
"""module → a function applied to it once it is imported."""


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, name: str):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        around = AROUND.get(self.name)
        if around is None:
            self.loader.exec_module(module)
        else:
            with around():
                self.loader.exec_module(module)
        if self.name in AFTER:
            AFTER[self.name](module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the patched modules through the other finders and wraps their loaders."""

    def find_spec(self, name, path, target=None):
        if name not in AROUND and name not in AFTER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, name)
        return spec


def install() -> None:
    """Install the patches in this process (idempotent); modules already imported are patched at once."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
    for name, patch in AFTER.items():
        if sys.modules.get(name) is not None:
            patch(sys.modules[name])
