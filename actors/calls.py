"""One failure-aware path for every actor call the controller makes: wait with a per-kind timeout and say what
went wrong — the actor died, its node died, it hung, an object it needed was lost — or, for a user error
(`AlignrayError` raised inside an actor), raise it as is: never retried, one clean line. Anything else is a
bug and propagates.

Waiting uses `ray.wait(..., fetch_local=False)`, so a batch is never pulled to the driver; only the small
results of calls (stats, metadata) are fetched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from alignray.errors import AlignrayError

DIED, NODE_DIED, UNREACHABLE, HUNG, OBJECT_LOST = "died", "node died", "unreachable", "hung", "object lost"


@dataclass
class ActorFault(Exception):
    """An infrastructure failure of one actor call: `cause` is one of died / node died / unreachable / hung /
    object lost."""

    actor: str
    cause: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.actor} {self.cause}" + (f" ({self.detail})" if self.detail else "")


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def _node_died(msg: str) -> bool:
    """Ray words an actor lost with its node as "... its node has died" (a killed process: "worker ...
    died")."""
    msg = msg.lower()
    return "its node has died" in msg or "node died" in msg or "because the node" in msg


def classify(actor: str, exc: BaseException) -> ActorFault:
    """The fault behind `exc`; raises the user error it carries, or `exc` itself when it is not a fault (a
    bug). A fault an actor met calling another (a reward worker's reward-model server) is that actor's."""
    if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), ActorFault):
        return exc.cause
    user = _user_error(exc)
    if user is not None:
        raise user
    if isinstance(exc, GetTimeoutError):
        return ActorFault(actor, HUNG, first_line(exc))
    if isinstance(exc, RayActorError):
        if exc.actor_init_failed:  # the same start would fail again: a clean error, not a restart loop
            detail = [line for line in str(exc).splitlines() if line.strip()]
            raise AlignrayError(f"{actor} failed to start: {detail[-1].strip() if detail else exc}") from None
        cause = NODE_DIED if exc.preempted or _node_died(str(exc)) else \
            UNREACHABLE if isinstance(exc, ActorUnavailableError) else DIED  # unreachable: handled as a death
        return ActorFault(actor, cause, first_line(exc))
    if isinstance(exc, NodeDiedError | LocalRayletDiedError):
        return ActorFault(actor, NODE_DIED, first_line(exc))
    if isinstance(exc, WorkerCrashedError | OutOfMemoryError):
        return ActorFault(actor, DIED, first_line(exc))
    if isinstance(exc, ObjectLostError):
        return ActorFault(actor, OBJECT_LOST, first_line(exc))
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, ObjectLostError):
        return ActorFault(actor, OBJECT_LOST, first_line(exc.cause))  # lost while the actor read its input
    raise exc


def _user_error(exc: BaseException) -> AlignrayError | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, AlignrayError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def wait_calls(calls: dict[str, ray.ObjectRef], timeout: float, stop_on_fault: bool = False
               ) -> tuple[dict[str, Any], dict[str, ActorFault]]:
    """Results of the calls that returned and faults of those that failed or took longer than `timeout`
    seconds, both by actor name. `stop_on_fault`: return at the first fault (a rank group is lost as a whole;
    waiting on the survivors, stuck in a collective, would only hang)."""
    deadline = time.monotonic() + timeout
    pending = {ref: name for name, ref in calls.items()}
    results: dict[str, Any] = {}
    faults: dict[str, ActorFault] = {}
    while pending:
        left = deadline - time.monotonic()
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(left, 0.0), fetch_local=False)
        if not ready:
            faults.update({name: ActorFault(name, HUNG,
                                            f"no answer in {timeout:g}s") for name in pending.values()})
            break
        name = pending.pop(ready[0])
        try:
            results[name] = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - classified: a fault is returned, anything else re-raised
            faults[name] = classify(name, exc)
            if stop_on_fault:
                break
    return results, faults


def kill(actor: ray.actor.ActorHandle) -> None:
    """Stop an actor for good; an actor that is already gone is fine."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead or its node is gone: nothing left to stop
        pass
