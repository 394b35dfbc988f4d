"""A chaos monkey for a live run: `kill -9` of actor processes at random moments (Poisson arrivals, seeded),
the victim's role drawn from a mix. Used by the fault tests and `benchmarks/chaos.py`; it only signals
processes on this machine (a local cluster, or several Ray nodes started here), found by the pids the run's
groups know.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Kill:
    at_s: float
    role: str
    actor: str
    pid: int
    step: int


@dataclass
class ChaosMonkey:
    controller: object  # alignray.driver.controller.Controller
    seed: int
    mean_interval_s: float
    mix: dict[str, float] = field(default_factory=lambda: {"rollout": 1.0, "reward": 1.0, "learner": 1.0})
    max_kills: int = 1_000_000
    kills: list[Kill] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alignray-chaos", daemon=True)
        self._killed: set[int] = set()
        self._t0 = time.monotonic()

    def start(self) -> ChaosMonkey:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[Kill]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.kills

    def _victims(self, role: str) -> dict[str, int]:
        c = self.controller
        try:
            pids = (c.learners.rank_pids if role == "learner"
                    else (c.rollout if role == "rollout" else c.reward).pids())
        except Exception:  # noqa: BLE001 - the group is being replaced right now: nobody to kill this time
            return {}
        return {name: pid for name, pid in dict(pids).items() if pid not in self._killed}

    def _run(self) -> None:
        roles, weights = list(self.mix), list(self.mix.values())
        while not self._stop.is_set() and len(self.kills) < self.max_kills:
            if self._stop.wait(self._rng.expovariate(1.0 / self.mean_interval_s)):
                return
            role = self._rng.choices(roles, weights)[0]
            victims = self._victims(role)
            if not victims:
                continue
            name = self._rng.choice(sorted(victims))
            try:
                os.kill(victims[name], signal.SIGKILL)
            except ProcessLookupError:
                continue
            self._killed.add(victims[name])
            self.kills.append(Kill(time.monotonic() - self._t0, role, name, victims[name],
                                   getattr(self.controller, "step", -1)))
