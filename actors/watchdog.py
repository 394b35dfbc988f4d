"""No silent hang, driver side: every actor call the driver waits on is tracked here, and a thread of the
driver watches them. A call with no answer after `train.hang_report_s` (the start calls and the first step:
`train.hang_report_startup_s`) is reported once — one warning line (role, member, call, seconds), then where
the actor is stuck (its busy thread's stack, from `watch_stack()`, see `actors.watch`), also written to
RUN_DIR/events.jsonl. While actors start, each start-up stage they pass is one line. `alignray status` shows
every call in flight and its age (RUN_DIR/calls.json, and the run's control actor).

Reporting never kills or replaces: the per-kind timeouts (`train.call_timeout_s`) still decide that.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from alignray.driver.events import FaultEvent, FaultLog
from alignray.driver.runlog import CALLS_FILE

POLL_S = 1.0
STACK_WAIT_S = 10.0
"""How long a stuck actor may take to answer `watch_stack()` before the report goes out without its stack."""


@dataclass
class Call:
    role: str
    member: str
    method: str
    actor: Any
    ref: ray.ObjectRef
    startup: bool
    started: float = field(default_factory=time.monotonic)
    stack_ref: ray.ObjectRef | None = None
    asked: float = 0.0
    reported: bool = False
    stages_ref: ray.ObjectRef | None = None


class Watchdog:
    def __init__(self) -> None:
        self.calls: dict[ray.ObjectRef, Call] = {}
        self.lock = threading.Lock()
        self.report_after_s, self.startup_report_after_s = 60.0, 300.0
        self.faults: FaultLog | None = None
        self.run_dir: Path | None = None
        self.publish: Callable[[list[dict]], None] | None = None
        self.first_step = True
        self.t0 = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._written: list[dict] | None = None
        self._stages_seen: dict[str, int] = {}  # per actor (its id): start-up stages already printed

    # ---- set-up --------------------------------------------------------------------------------------------
    def start(self, report_after_s: float, startup_report_after_s: float, faults: FaultLog | None = None,
              run_dir: Path | None = None) -> None:
        """Watch from now on (one thread per driver process; a second start reconfigures it)."""
        self.report_after_s, self.startup_report_after_s = report_after_s, startup_report_after_s
        self.faults, self.run_dir, self.first_step, self.t0 = faults, run_dir, True, time.monotonic()
        if self._thread is None or not self._thread.is_alive() or self._stop.is_set():
            self._stop = threading.Event()  # a stopping thread keeps its own (set) event and ends
            self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="alignray-watchdog",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching; waits for the thread's last check, so no Ray call of it outlives the run (one after
        Ray's shutdown would start a new local Ray: Ray connects on demand)."""
        self._stop.set()
        with self.lock:
            self.calls.clear()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=3 * POLL_S)

    # ---- tracking ------------------------------------------------------------------------------------------
    def track(self, role: str, member: str, actor: Any, method: str, ref: ray.ObjectRef,
              startup: bool = False) -> ray.ObjectRef:
        """Watch `ref`, the answer of `actor.method(...)`; returns `ref`."""
        with self.lock:
            self.calls[ref] = Call(role, member, method, actor, ref, startup or self.first_step)
        return ref

    def launch(self, role: str, member: str, actor: Any, method: str, *args: Any,
               startup: bool = False) -> Any:
        """`actor.method.remote(*args)`, watched (a method with several returns is watched on its last)."""
        out = getattr(actor, method).remote(*args)
        self.track(role, member, actor, method, out[-1] if isinstance(out, list) else out, startup)
        return out

    def in_flight(self, older_than_s: float = 1.0) -> list[dict]:
        """The calls in flight for longer than `older_than_s`: role, member, call, age in seconds."""
        now = time.monotonic()
        with self.lock:
            calls = list(self.calls.values())
        return [{"role": c.role, "member": c.member, "call": c.method, "age_s": round(now - c.started, 1)}
                for c in calls if now - c.started > older_than_s]

    # ---- the watching thread -------------------------------------------------------------------------------
    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the watchdog must never take the run down
                if not ray.is_initialized():
                    return
                print(f"alignray: note: watchdog check failed ({type(exc).__name__}: {exc})", file=sys.stderr,
                      flush=True)

    def tick(self) -> None:
        if not ray.is_initialized():  # between runs, or after the shutdown: nothing to ask, nothing to start
            return
        with self.lock:
            calls = list(self.calls.values())
        if not calls:
            self._write_calls()
            return
        done, _ = ray.wait([c.ref for c in calls], num_returns=len(calls), timeout=0, fetch_local=False)
        done = set(done)
        with self.lock:
            for ref in done:
                self.calls.pop(ref, None)
        now = time.monotonic()
        for call in calls:
            if call.startup:
                self._show_stages(call, final=call.ref in done)
            if call.ref in done:
                continue
            limit = self.startup_report_after_s if call.startup else self.report_after_s
            if not call.reported and now - call.started > limit:
                call.reported, call.asked = True, now
                call.stack_ref = self._ask(call.actor, "watch_stack")
            if call.stack_ref is not None and (ray.wait([call.stack_ref], timeout=0)[0]
                                               or now - call.asked > STACK_WAIT_S):
                self._report(call, now, limit)
        self._write_calls()

    @staticmethod
    def _ask(actor: Any, method: str) -> ray.ObjectRef | None:
        try:
            return getattr(actor, method).remote()
        except Exception:  # noqa: BLE001 - an actor without the method, or one already gone
            return None

    def _answer(self, ref: ray.ObjectRef | None) -> Any:
        if ref is None or not ray.wait([ref], timeout=0)[0]:
            return None
        try:
            return ray.get(ref)
        except Exception:  # noqa: BLE001 - the actor died meanwhile: its call's own wait reports that
            return None

    def _report(self, call: Call, now: float, limit: float) -> None:
        stack = self._answer(call.stack_ref) or "    (no stack: the actor does not answer)"
        call.stack_ref = None
        action = f"{call.method} has run {now - call.started:.0f}s with no answer (reported after {limit:g}s)"
        event = FaultEvent(call.role, call.member, "no progress", action, detail=stack)
        if self.faults is not None:
            self.faults.record(event, restart=False)
        else:
            print(event.line().replace(" at step None", ""), file=sys.stderr, flush=True)
        print(f"alignray: {call.member} is here (innermost last):\n{stack}", file=sys.stderr, flush=True)

    def _show_stages(self, call: Call, final: bool = False) -> None:
        """Print the start-up stages the member passed since the last look; ask again (`final`: the call
        returned; wait for its last stages)."""
        if final:
            call.stages_ref = self._ask(call.actor, "watch_stages")
            if call.stages_ref is not None:
                ray.wait([call.stages_ref], timeout=STACK_WAIT_S)
        stages = self._answer(call.stages_ref)
        if stages is not None or call.stages_ref is None:
            key = call.actor._actor_id.hex()
            for name, seconds in (stages or [])[self._stages_seen.get(key, 0):]:
                print(f"alignray: start-up {time.monotonic() - self.t0:6.1f}s  {call.member}: {name} "
                      f"({seconds:.1f}s)", flush=True)
            self._stages_seen[key] = max(self._stages_seen.get(key, 0), len(stages or []))
            call.stages_ref = self._ask(call.actor, "watch_stages")

    def _write_calls(self) -> None:
        """RUN_DIR/calls.json (what `alignray status` shows), and the control actor, when the list changed."""
        calls = self.in_flight()
        if calls == self._written:
            return
        self._written = calls
        if self.run_dir is not None and self.run_dir.exists():
            tmp = self.run_dir / (CALLS_FILE + ".tmp")
            tmp.write_text(json.dumps({"updated": time.time(), "calls": calls}) + "\n")
            tmp.replace(self.run_dir / CALLS_FILE)
        if self.publish is not None:
            self.publish(calls)


WATCHDOG = Watchdog()
"""The driver process's watchdog (the pools and rank groups register their calls with it)."""
