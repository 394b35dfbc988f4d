"""Faults a run survived, made visible: one warning line on stderr, one line in RUN_DIR/events.jsonl, and
counters that go into the step's metrics (`fault/restarts/<role>`, `fault/requeued`, `fault/rescored`,
`fault/steps_retrained`).

Pure bookkeeping (no Ray): the controller reports what happened and what it did about it.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from alignray.errors import AlignrayError

ROLES = ("rollout", "reward", "learner")


@dataclass(frozen=True)
class FaultEvent:
    role: str  # rollout | reward | learner
    actor: str  # e.g. rollout-3, learner (the whole rank group is one unit)
    cause: str  # died | node died | hung | weights lost | batch lost | init failed
    action: str  # what the controller did, e.g. "replaced; 4 prompts requeued"
    # the last completed step when it happened (None: the FaultLog stamps the run's step)
    step: int | None = None
    detail: str = ""

    def line(self) -> str:
        return f"alignray: warning: {self.role} {self.actor} {self.cause} at step {self.step}: {self.action}"


class FaultLog:
    """Counts restarts per role against `max_restarts`; past it, `record` raises one clean error."""

    def __init__(self, run_dir: str | Path | None, max_restarts: int,
                 current_step: Callable[[], int] = lambda: 0):
        """`current_step()`: the run's last completed step (the controller owns it), stamped on events without
        one."""
        self.current_step = current_step
        self.path = Path(run_dir) / "events.jsonl" if run_dir is not None else None
        self.max_restarts = max_restarts
        self.restarts: Counter = Counter()
        self.totals: Counter = Counter()  # requeued, rescored, steps_retrained
        self.recent: deque[FaultEvent] = deque(maxlen=20)

    def record(self, event: FaultEvent, restart: bool = True) -> None:
        """Warn, append to events.jsonl, count; raise if the role has now been restarted too often."""
        if event.step is None:
            event = replace(event, step=self.current_step())
        print(event.line(), file=sys.stderr, flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"time": time.time(), **asdict(event)}) + "\n")
        self.recent.append(event)
        if restart:
            self.restarts[event.role] += 1
            if self.restarts[event.role] > self.max_restarts:
                raise AlignrayError(
                    f"{event.role} failed {self.restarts[event.role]} times "
                    f"(train.max_restarts={self.max_restarts}); "
                    f"last: {event.actor} {event.cause}; last good step {event.step} — continue with "
                    f"`alignray train --resume RUN_DIR` once the cause is fixed")

    def add(self, key: str, n: int) -> None:
        self.totals[key] += n

    def metrics(self) -> dict[str, int]:
        """Cumulative counters for the step's metrics line."""
        out = {f"fault/restarts/{role}": self.restarts[role] for role in ROLES}
        out.update({f"fault/{k}": self.totals[k] for k in ("requeued", "rescored", "steps_retrained")})
        return out
