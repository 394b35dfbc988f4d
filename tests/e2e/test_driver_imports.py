"""The driver stays light: it schedules by reference and never needs torch, transformers' models or DeepSpeed.
Each of them costs seconds of start-up on the run's critical path (before Ray starts) and competes with the
actors' own start on a small machine, so a run's driver process must not import them at all."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "deepspeed", "sklearn", "transformers.models.auto")

DRIVER = f"""
import sys, tempfile
from alignray.config import load_config
from alignray.driver.controller import Controller

cfg = load_config(None, ["train.steps=1", "train.progress=false", "train.loggers=[tensorboard]"])
controller = Controller(cfg, tempfile.mkdtemp())
try:
    controller.run()
finally:
    controller.close()
print([m for m in {HEAVY!r} if m in sys.modules])
"""


def test_importing_the_cli_and_controller_loads_no_heavy_module():
    code = ("import sys, alignray.cli, alignray.driver.controller; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_training_run_never_imports_torch_in_the_driver():
    """One real step (Ray, learner ranks, rollout and reward workers, weight sync, TensorBoard) from a fresh
    process."""
    out = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
