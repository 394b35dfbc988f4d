"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (`kill`, `ray job stop`, a Kubernetes eviction) end it
with one line — where it stopped, what is saved, how to go on — exit 130 / 143, and no actor process left
behind.

The signal raises `Stopped` in the driver's main thread; the controller's `finally` closes every actor, the
CLI shuts down the local Ray. `Stopped` is a BaseException, so no `except Exception` on the way swallows it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from alignray.driver.runlog import latest_checkpoint

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_S = 20.0
"""How long Ray's own shutdown may take when a run is stopped (a signal to the whole process group may have
taken Ray's processes down first) before the driver exits anyway."""


class Stopped(BaseException):
    def __init__(self, signum: int, where: str = ""):
        super().__init__(signum, where)
        self.signum, self.where = signum, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        return (f"alignray: stopped by {signal.Signals(self.signum).name}"
                + (f" {self.where}" if self.where else ""))


def _raise(signum: int, frame) -> None:
    raise Stopped(signum)


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise `Stopped` in the main thread (`actors.cluster.connect_ray` keeps them so after
    Ray starts, which would install its own)."""
    for sig in SIGNALS:
        signal.signal(sig, _raise)


def where_stopped(run_dir: Path, step: int, steps: int) -> str:
    """`at step N of M; ...` with the newest checkpoint and the command that continues from it."""
    checkpoint = latest_checkpoint(run_dir)
    saved = (f"newest checkpoint {checkpoint}; continue with: alignray train --resume {run_dir}" if checkpoint
             else "no checkpoint saved yet (train.save_interval sets how often a run saves one)")
    return f"at step {step} of {steps}; {saved}"


def shutdown_ray(exit_code: int, timeout_s: float = SHUTDOWN_S) -> None:
    """Disconnect from Ray: a local Ray stops with all its processes; on a cluster the run's actors end with
    their driver. Bounded: if Ray's shutdown hangs, exit now — Ray's processes share the driver's fate (they
    die with it), so nothing is left behind either way."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    deadline = threading.Timer(timeout_s, os._exit, args=(exit_code,))
    deadline.daemon = True
    deadline.start()
    ray.shutdown()  # in the main thread: Ray restores its signal handling there
    deadline.cancel()


def stopped_by(exc: BaseException) -> Stopped | None:
    """The `Stopped` behind `exc`: Ray's C++ waits re-raise a signal handler's exception wrapped (a
    SystemError whose cause it is)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, Stopped):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
