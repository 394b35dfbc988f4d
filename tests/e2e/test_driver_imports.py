"""The driver stays light: it schedules by reference and never needs torch, transformers' models or DeepSpeed.
Each of them costs seconds of start-up on the run's critical path (before Ray starts) and competes with the
actors' own start on a small machine, so a run's driver process must not import them at all."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "deepspeed", "sklearn", "transformers.models.auto")

WHO_IMPORTS = '''
import importlib.abc, importlib.machinery, sys, traceback


class WhoImports(importlib.abc.MetaPathFinder):
    """The stack of the first real import of torch (a probe by find_spec runs no loader)."""
    stack = None

    def find_spec(self, name, path, target=None):
        if name != "torch":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        run = spec.loader.exec_module

        def exec_module(module):
            WhoImports.stack = WhoImports.stack or "".join(traceback.format_stack(limit=30))
            return run(module)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, WhoImports())
'''

DRIVER = WHO_IMPORTS + f'''
import tempfile
from alignray.config import load_config
from alignray.driver.controller import Controller

cfg = load_config(None, ["train.steps=1", "train.progress=false", "train.loggers=[tensorboard]"])
controller = Controller(cfg, tempfile.mkdtemp())
try:
    controller.run()
finally:
    controller.close()
print(WhoImports.stack or "", file=sys.stderr)
print([m for m in {HEAVY!r} if m in sys.modules])
'''

ACTOR_ERROR = WHO_IMPORTS + '''
import gc
import ray
from alignray.actors.watch import WATCHED, Watched
from alignray.errors import LibraryError


@ray.remote(**WATCHED)
class Collective(Watched):
    def broken(self):
        import torch
        raise torch.distributed.DistBackendError("gloo: connection closed by peer")


ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
actor = Collective.remote()
try:
    ray.get(actor.broken.remote())
except ray.exceptions.RayTaskError as err:
    assert isinstance(err.cause, LibraryError), repr(err.cause)
    print(err.cause)
dropped = actor.broken.remote()  # never asked for: Ray unpickles its error when the ref is dropped
ray.get(actor.pid.remote())  # the actor runs one call at a time: `broken` has failed, its error is here
del dropped
gc.collect()
print(WhoImports.stack or "", file=sys.stderr)
print("torch" in sys.modules)
'''


def test_importing_the_cli_and_controller_loads_no_heavy_module():
    code = ("import sys, alignray.cli, alignray.driver.controller; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_training_run_never_imports_torch_in_the_driver():
    """One real step (Ray, learner ranks, rollout and reward workers, weight sync, TensorBoard) from a fresh
    process. On failure the message shows the stack that imported torch."""
    out = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-3000:]


def test_an_actor_error_of_a_library_class_reaches_the_driver_without_that_library():
    """A rank's broken collective raises torch's own class. The driver reads it, whether asked for or dropped
    (Ray unpickles a dropped error on its own: the flaky torch import of a run's driver), and never imports
    torch: the actor re-raises it as alignray.errors.LibraryError."""
    out = subprocess.run([sys.executable, "-c", ACTOR_ERROR], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "torch.distributed.DistBackendError: gloo: connection closed by peer"
    assert lines[-1] == "False", out.stderr[-3000:]
