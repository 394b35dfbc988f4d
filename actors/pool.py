"""An elastic pool of workers of one role (rollout or reward), each member in its own placement group.

A member is `pending` until Ray places its group (a scale request with no free capacity waits here, it never
fails the run), `starting` until its start call returns (a rollout worker loads the current weights first),
then `ready`; only ready members get work. A member that dies, hangs or loses its node at any point is
replaced, keeping the pool at its target size; `reconcile()` moves members along without blocking and is
called by the controller between its waits.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignray.actors.calls import HUNG, OBJECT_LOST, ActorFault, classify, kill, wait_calls
from alignray.actors.watchdog import WATCHDOG
from alignray.driver.events import FaultEvent, FaultLog

PENDING, STARTING, READY = "pending", "starting", "ready"


@runtime_checkable
class Pool(Protocol):
    """What the controller, the shard pipeline and the scaler drive: a pool of members of one role. A
    `WorkerPool` (rollout or reward workers, elastic), or in a colocated run an `actors.groups.RankPool` (the
    learner ranks doing that role's work, fixed size)."""

    role: str
    elastic: bool
    """Scale requests and the autoscaler may resize it."""
    weights_lost: bool
    """A member could not read the published weights: the learner must publish them again."""
    resources: dict[str, float]
    """One member's resources (the bundle the scaler asks the Ray autoscaler for; empty when not elastic)."""

    @property
    def members(self) -> Mapping[str, Any]: ...
    @property
    def target(self) -> int: ...
    def ready(self) -> list[str]: ...
    def actor(self, name: str) -> Any: ...
    def states(self) -> dict[str, str]: ...
    def count(self, state: str) -> int: ...
    def pids(self) -> dict[str, int]: ...
    def reconcile(self) -> None: ...
    def wait_ready(self, minimum: int = 1) -> None: ...
    def replace(self, fault: ActorFault, action: str = "") -> str | None: ...
    def broadcast(self, method: str, timeout: float, *args) -> tuple[dict, list[ActorFault]]: ...
    def scale(self, target: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class Member:
    name: str
    pg: PlacementGroup
    placed: ray.ObjectRef
    actor: ray.actor.ActorHandle | None = None
    start_ref: ray.ObjectRef | None = None
    pid_ref: ray.ObjectRef | None = None
    node_hint: str | None = None  # the node it was asked to go to (spreading), until it is placed
    state: str = PENDING
    since: float = field(default_factory=time.monotonic)


class WorkerPool:
    """An elastic pool of Ray actors of one role (see the module docstring)."""

    elastic = True  # scale requests and the autoscaler resize it (a colocated run's `RankPool` is not)

    def __init__(self, role: str, make_actor: Callable[[dict, str], ray.actor.ActorHandle],
                 start_call: Callable[[ray.actor.ActorHandle], ray.ObjectRef], cpus: float, gpus: float,
                 target: int, faults: FaultLog, start_timeout: float):
        """`make_actor(options, name)` creates a member inside the given scheduling options;
        `start_call(actor)` is its first call (it must succeed before the member takes work)."""
        self.role, self.make_actor, self.start_call = role, make_actor, start_call
        self.resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.faults, self.start_timeout = faults, start_timeout
        self.members: dict[str, Member] = {}
        self._ids = itertools.count()
        self.target = 0
        self.weights_lost = False  # a starting member could not read its weights: the learner must republish
        self.scale(target)

    # ---- size ----------------------------------------------------------------------------------------------
    def scale(self, target: int, place_grace_s: float = 5.0) -> None:
        """Grow (new members start pending) or shrink (pending members go first, then the newest). New members
        the cluster can place within `place_grace_s` are placed before this returns (the next `reconcile`
        starts them); the others stay pending until capacity appears."""
        self.target = target
        added = [self._add() for _ in range(target - len(self.members))]
        if added:
            refs = [self.members[name].placed for name in added]
            ray.wait(refs, num_returns=len(refs), timeout=place_grace_s, fetch_local=False)
        order = {PENDING: 0, STARTING: 1, READY: 2}
        while len(self.members) > target:
            victim = min(reversed(list(self.members.values())), key=lambda m: order[m.state])
            self.remove(victim.name)

    def _add(self) -> str:
        name = f"{self.role}-{next(self._ids)}"
        target = self._emptiest_node()
        pg = placement_group([dict(self.resources)], strategy="STRICT_PACK", name=f"alignray-{name}",
                             _soft_target_node_id=target)
        self.members[name] = Member(name, pg, pg.ready(), node_hint=target)
        return name

    def _emptiest_node(self) -> str | None:
        """Spread members over nodes: the live node big enough for a member that hosts the fewest of them (a
        soft target: Ray places the member elsewhere when that node has no room now)."""
        try:
            nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and all(
                n["Resources"].get(k, 0) >= v for k, v in self.resources.items())]
            if len(nodes) < 2:
                return None
            hosting = [m.node_hint if m.state == PENDING else
                       ray.util.placement_group_table(m.pg)["bundles_to_node_id"].get(0)
                       for m in self.members.values()]
            return min(nodes, key=hosting.count)
        except Exception:  # noqa: BLE001 - a hint only; without it Ray places the member where it fits
            return None

    def remove(self, name: str) -> None:
        member = self.members.pop(name)
        if member.actor is not None:
            kill(member.actor)
        try:
            remove_placement_group(member.pg)
        except Exception:  # noqa: BLE001 - its node is gone with it
            pass

    # ---- state ---------------------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Start members whose group was placed; promote those whose start call returned; replace failed
        ones."""
        for member in list(self.members.values()):
            if member.state == PENDING:
                placed, _ = ray.wait([member.placed], timeout=0, fetch_local=False)
                if placed:
                    self._start(member)
            elif member.state == STARTING:
                # its weights were lost with the learner: waits for the next push
                if member.start_ref is None:
                    continue
                done, _ = ray.wait([member.start_ref], timeout=0, fetch_local=False)
                if done:
                    try:
                        ray.get(done[0])
                        member.state = READY
                    except Exception as exc:  # noqa: BLE001 - classified; user errors and bugs re-raised
                        fault = classify(member.name, exc)
                        if fault.cause == OBJECT_LOST:
                            member.start_ref, self.weights_lost = None, True
                        else:
                            self.replace(fault)
                elif time.monotonic() - member.since > self.start_timeout:
                    self.replace(ActorFault(member.name, HUNG, f"not started in {self.start_timeout:g}s"))
        if self.weights_lost:  # only a learner that publishes again can unblock these members
            raise ActorFault("learner", "weights lost",
                             f"{self.role} members could not read the published weights")

    def _start(self, member: Member) -> None:
        options = {"num_cpus": self.resources["CPU"], "num_gpus": self.resources.get("GPU", 0),
                   "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=member.pg,
                                                                           placement_group_bundle_index=0)}
        member.actor = self.make_actor(options, member.name)
        member.start_ref = WATCHDOG.track(self.role, member.name, member.actor, "start",
                                          self.start_call(member.actor), startup=True)
        member.pid_ref = member.actor.pid.remote()  # asked once, read without an actor call later
        member.state, member.since = STARTING, time.monotonic()

    def replace(self, fault: ActorFault, action: str = "") -> str | None:
        """Drop a failed member and start a fresh one in its place (if the pool still wants it); report it."""
        if fault.actor not in self.members:
            return None
        self.remove(fault.actor)
        new = self._add() if len(self.members) < self.target else None
        what = f"replaced by {new}" if new else "removed"
        self.faults.record(FaultEvent(self.role, fault.actor, fault.cause,
                                      what + (f"; {action}" if action else ""), detail=fault.detail))
        return new

    def broadcast(self, method: str, timeout: float, *args) -> tuple[dict, list[ActorFault]]:
        """`method(*args)` on every ready member, and as the start call of every starting one (it becomes
        ready once that returns). Members that fail are replaced; faults of objects lost to the call (the
        caller's data, not the member) are returned for the caller to handle."""
        calls = {}
        for member in self.members.values():
            if member.actor is None:
                continue
            ref = WATCHDOG.launch(self.role, member.name, member.actor, method, *args,
                                  startup=member.state == STARTING)
            if member.state == READY:
                calls[member.name] = ref
            elif member.state == STARTING:
                member.start_ref, member.since = ref, time.monotonic()
        self.weights_lost = False
        results, faults = wait_calls(calls, timeout)
        lost = [f for f in faults.values() if f.cause == OBJECT_LOST]
        for fault in faults.values():
            if fault.cause != OBJECT_LOST:
                self.replace(fault)
        return results, lost

    def wait_ready(self, minimum: int = 1, poll_s: float = 0.05, note_after_s: float = 15.0) -> None:
        """Block until at least `minimum` members are ready and none is still starting (pending ones may wait
        on capacity as long as it takes; the wait is announced once)."""
        t0, announced = time.monotonic(), False
        while True:
            self.reconcile()
            states = [m.state for m in self.members.values()]
            if states.count(READY) >= minimum and STARTING not in states:
                return
            if not announced and time.monotonic() - t0 > note_after_s and states.count(READY) < minimum:
                why = f"capacity (each needs {self.resources})" if PENDING in states else "members to start"
                print(f"alignray: waiting for {why}: {self.role} {self.states()}", flush=True)
                announced = True
            time.sleep(poll_s)

    def ready(self) -> list[str]:
        return [m.name for m in self.members.values() if m.state == READY]

    def actor(self, name: str) -> ray.actor.ActorHandle:
        return self.members[name].actor

    def states(self) -> dict[str, str]:
        return {m.name: m.state for m in self.members.values()}

    def count(self, state: str) -> int:
        return sum(m.state == state for m in self.members.values())

    def pids(self) -> dict[str, int]:
        """Process id of each started member whose pid is known (chaos runs kill -9 them; `status` shows
        them)."""
        out = {}
        for member in list(self.members.values()):
            if member.pid_ref is not None and ray.wait([member.pid_ref], timeout=0, fetch_local=False)[0]:
                try:
                    out[member.name] = ray.get(member.pid_ref)
                except Exception:  # noqa: BLE001 - it died before it answered: not listed
                    pass
        return out

    def close(self) -> None:
        for name in list(self.members):
            self.remove(name)
