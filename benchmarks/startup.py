"""Where the time before the first trained step goes: `python benchmarks/startup.py [--out startup.json]
[overrides]`.

Times, from the driver, each stage the Controller runs while it starts (Ray, the rollout and reward pools, the
learner rank group), the first weight sync, the waits for the pools' members, and the first step of the loop;
each learner rank reports its own setup (worker start + imports, DeepSpeed import, process group, model
builds, deepspeed.initialize). The stages are timed by wrapping the controller's own functions, so the numbers
are those of a real `alignray train` start-up.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def timed(table: dict, name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[name] = table.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    import ray

    import alignray.driver.controller as ctl
    from alignray.config import load_config

    stages: dict[str, float] = {"import_s": time.perf_counter() - t_start}
    for name in ("connect_ray", "rollout_pool", "reward_pool", "check_capacity"):
        setattr(ctl, name, timed(stages, f"{name}_s", getattr(ctl, name)))
    ctl.Controller._start_learners = timed(stages, "learner_group_s", ctl.Controller._start_learners)
    from alignray.actors.pool import WorkerPool

    first_sync = timed(stages, "first_sync_weights_s", ctl.Controller.sync_weights)
    later_sync = ctl.Controller.sync_weights

    def sync_weights(self):
        return (later_sync if self.step else first_sync)(self)
    ctl.Controller.sync_weights = sync_weights
    wait_ready = WorkerPool.wait_ready

    def timed_wait_ready(self, *a, **kw):
        return timed(stages, f"{self.role}_wait_ready_s", wait_ready)(self, *a, **kw)
    WorkerPool.wait_ready = timed_wait_ready
    marks: dict[str, float] = {}
    original_start = ctl.Controller._start_learners

    def start_learners(self):
        marks["learner_group_start"] = time.time()
        return original_start(self)
    ctl.Controller._start_learners = start_learners
    cfg = load_config(None, ["train.steps=2", "train.progress=false", *args.overrides])
    run_dir = Path(tempfile.mkdtemp(prefix="alignray-startup-"))
    t0 = time.perf_counter()
    controller = ctl.Controller(cfg, run_dir)
    stages["controller_total_s"] = time.perf_counter() - t0
    first: dict[str, float] = {}
    t1 = time.perf_counter()

    def on_step(metrics: dict) -> None:
        if not first:
            first.update({k: v for k, v in metrics.items() if k.startswith("timing/")},
                         first_step_wall_s=time.perf_counter() - t1)
    try:
        controller.run(on_step=on_step)
        ranks = ray.get([r.startup_timing.remote() for r in controller.learners.ranks])
        for r in ranks:  # on the driver's clock: placement + worker spawn, then the worker's own imports
            r["spawn_s"] = r.pop("process_created") - marks["learner_group_start"]
            r["worker_boot_and_imports_s"] = (r.pop("init_called") - marks["learner_group_start"]
                                              - r["spawn_s"])
    finally:
        controller.close()
    result = {"stages": stages, "first_step": first,
              "to_first_step_s": (stages["import_s"] + stages["controller_total_s"]
                                  + first["first_step_wall_s"]),
              "learner_ranks": ranks, "overrides": args.overrides}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
