"""`alignray scale RUN_DIR --rollout N [--reward M] [--rm-server K]` and `alignray status RUN_DIR`, from
another terminal.

With a Ray address (`--address` or RAY_ADDRESS: a run on a cluster, e.g. submitted with `ray job submit`) they
talk to the run's control actor (alignray.actors.control), found by the run directory's name. Without one (a
run on this machine) they use the run directory: a request goes into RUN_DIR/control.yaml, the status comes
from RUN_DIR/status.json. Either way the request is taken at the start of the run's next step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from alignray.driver.control_file import CONTROL_FILE, write_request
from alignray.driver.runlog import CALLS_FILE
from alignray.errors import AlignrayError


def _control(run_dir: str, address: str):
    import ray

    from alignray.actors.control import NAMESPACE, connect, control_name

    connect(address)
    try:
        return ray.get_actor(control_name(run_dir), namespace=NAMESPACE)
    except ValueError:
        raise AlignrayError(f"no running alignray run named {Path(run_dir).name!r} on the cluster at "
                            f"{address} (its control actor {control_name(run_dir)!r} "
                            "was not found)") from None


def scale_main(run_dir: str, rollout: int | None, reward: int | None, address: str | None,
               rm_server: int | None = None) -> dict:
    wanted = {role: n for role, n in (("rollout", rollout), ("reward", reward), ("rm_server", rm_server))
              if n is not None}
    if not wanted:
        raise AlignrayError("alignray scale: give --rollout N, --reward M and/or --rm-server K")
    if any(n < 1 for n in wanted.values()):
        raise AlignrayError(f"alignray scale: pool sizes must be at least 1 (got {wanted})")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        return ray.get(_control(run_dir, address).request.remote(wanted), timeout=30)
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise AlignrayError(f"{run_dir}: not a run directory (no config.yaml); for a run on a cluster give "
                            f"--address or RAY_ADDRESS")
    return {"queued": wanted, "file": str(write_request(path, wanted))}


def status_main(run_dir: str, address: str | None) -> dict:
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        import ray

        return ray.get(_control(run_dir, address).get_status.remote(), timeout=30)
    path, calls = Path(run_dir) / "status.json", Path(run_dir) / CALLS_FILE
    if not path.is_file() and not calls.is_file():
        raise AlignrayError(f"{run_dir}: no status.json yet (not a run directory, or its first step "
                            "has not ended)")
    status = json.loads(path.read_text()) if path.is_file() else {"run_dir": run_dir, "updated": 0.0}
    if calls.is_file():  # the watchdog's: fresher than status.json while a step (or the start) hangs
        status["calls"] = json.loads(calls.read_text())["calls"]
    control = Path(run_dir) / CONTROL_FILE
    if control.is_file() and control.stat().st_mtime > status["updated"]:
        status["queued_requests"] = [yaml.safe_load(control.read_text())]
    return status
