"""Elastic pools while a run goes on (part of the controller; it drives the pools): scale requests from
`alignray scale` (through the run's control actor, or RUN_DIR/control.yaml), the autoscaling rule
(alignray.driver.autoscale), resource requests to the Ray autoscaler, and the run's status for `alignray
status` (RUN_DIR/status.json and the control actor).

A request never fails the run: a member the cluster cannot place now stays pending and starts when capacity
appears; a later, smaller request cancels pending members first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ray
import yaml

from alignray.actors.control import start_control
from alignray.actors.pool import Pool
from alignray.actors.watchdog import WATCHDOG
from alignray.config import Config
from alignray.driver.autoscale import decide, wait_share
from alignray.driver.control_file import CONTROL_FILE, read_request
from alignray.driver.events import FaultLog

CONTROL_TIMEOUT_S = 30.0


class Scaler:
    def __init__(self, cfg: Config, run_dir: Path, pools: dict[str, Pool], faults: FaultLog):
        self.cfg, self.run_dir, self.pools, self.faults = cfg, run_dir, pools, faults
        self.autoscale = {"rollout": cfg.rollout.autoscale, "reward": cfg.reward.autoscale}
        self.waits: dict[str, list[float]] = {"rollout": [], "reward": [], "step": []}
        self._file_seen: int | None = None
        self.control = start_control(run_dir)
        WATCHDOG.publish = lambda calls: self.control.publish_calls.remote(calls)
        self._take = self._ask()
        self.last: dict = {}
        for role, auto in self.autoscale.items():  # the rule works inside [min, max]
            if auto.enabled and not auto.min <= pools[role].target <= auto.max:
                pools[role].scale(min(max(pools[role].target, auto.min), auto.max))
        self._request_resources()

    # ---- requests ------------------------------------------------------------------------------------------
    def _ask(self) -> tuple[ray.ObjectRef, float]:
        return self.control.take_requests.remote(), time.monotonic()

    def apply_requests(self) -> None:
        """Scale requests that arrived since the last step: the control actor's, then RUN_DIR/control.yaml's.
        The control actor is asked ahead and never waited on (the first step does not wait for it to start);
        an answer not back after CONTROL_TIMEOUT_S counts as the actor being lost."""
        ref, asked = self._take
        requests: list[dict] = []
        try:
            if ray.wait([ref], timeout=0, fetch_local=True)[0]:
                requests, self._take = ray.get(ref), self._ask()
            elif time.monotonic() - asked > CONTROL_TIMEOUT_S:
                raise TimeoutError(f"no answer in {CONTROL_TIMEOUT_S:g}s")
        except Exception as exc:  # noqa: BLE001 - the control actor is a convenience; the run goes on without it
            print(f"alignray: warning: control actor unavailable ({type(exc).__name__}); restarting it",
                  flush=True)
            self.control = start_control(self.run_dir)
            self._take = self._ask()
        for wanted in requests + self._from_file():
            for role, n in wanted.items():
                self.scale(role, n, "requested")

    def _from_file(self) -> list[dict]:
        """`rollout_workers: N` / `reward_workers: M` in RUN_DIR/control.yaml, read when it changes; a bad
        file is reported once and ignored."""
        path = self.run_dir / CONTROL_FILE
        if not path.is_file() or path.stat().st_mtime_ns == self._file_seen:
            return []
        self._file_seen = path.stat().st_mtime_ns
        try:
            wanted = read_request(path)
        except (yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
            print(f"alignray: ignoring {path}: {e}", file=sys.stderr, flush=True)
            return []
        return [wanted]

    def scale(self, role: str, target: int, why: str) -> None:
        pool = self.pools.get(role)
        if pool is None:  # rm_server without reward.service
            print(f"alignray: {role} scale request to {target} ignored: this run has no {role} pool "
                  "(reward.service.enabled is false)", file=sys.stderr, flush=True)
            return
        if target == pool.target:
            return
        if not pool.elastic:  # train.colocate: the learner ranks do this role's work
            print(f"alignray: {role} scale request to {target} ignored: {role} runs inside the learner ranks "
                  "(train.colocate); it scales with learner.num_ranks", file=sys.stderr, flush=True)
            return
        before = pool.target
        pool.scale(target)
        self._request_resources()
        pending = pool.count("pending")
        print(f"alignray: {role} pool {before} → {target} ({why})"
              + (f"; {pending} pending until the cluster has room" if pending else ""),
              file=sys.stderr, flush=True)
        pool.wait_ready()  # members that could be placed take work from the next step; pending ones wait

    def _request_resources(self) -> None:
        """Tell the Ray autoscaler what the run wants in all (KubeRay / the cluster launcher bring nodes up);
        a cluster without an autoscaler ignores it."""
        bundles = [dict(pool.resources) for pool in self.pools.values() if pool.elastic
                   for _ in range(pool.target)]
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
        except Exception as exc:  # noqa: BLE001 - advisory only; nothing in a scale path may fail the run
            print(f"alignray: note: autoscaler request not sent ({type(exc).__name__}: {exc})",
                  file=sys.stderr)

    # ---- after each step -----------------------------------------------------------------------------------
    def after_step(self, metrics: dict, step: int) -> None:
        step_s = sum(metrics[f"timing/{k}"] for k in ("generate_s", "reward_s", "train_s", "sync_s"))
        self.waits["rollout"].append(metrics["timing/generate_s"])
        self.waits["reward"].append(metrics["timing/reward_s"])
        self.waits["step"].append(step_s)
        for role, auto in self.autoscale.items():
            target = decide(self.pools[role].target, self.waits[role], self.waits["step"], auto)
            if target != self.pools[role].target:
                share = wait_share(self.waits[role][-auto.window:], self.waits["step"][-auto.window:])
                self.scale(role, target, f"autoscale: wait share {share:.2f} over {auto.window} steps")
                self.waits = {k: [] for k in self.waits}  # the next decision needs a fresh window
        self.publish(metrics, step)

    def publish(self, metrics: dict, step: int) -> None:
        window = self.waits["step"][-3:]
        self.last = {
            "run_dir": str(self.run_dir), "pid": os.getpid(), "updated": time.time(), "step": step,
            "steps": self.cfg.train.steps, "policy_version": metrics.get("policy_version"),
            "samples_per_s": metrics.get("throughput/samples_per_s"),
            "generate_wait_share": wait_share(self.waits["rollout"][-3:], window),
            "score_wait_share": wait_share(self.waits["reward"][-3:], window),
            "pools": {role: {"target": pool.target, "members": pool.states(),
                             "autoscale": (self.autoscale[role].model_dump() if role in self.autoscale
                                           and self.autoscale[role].enabled else None)}
                      for role, pool in self.pools.items()},
            "recent_faults": [e.line() for e in self.faults.recent],
            "calls": WATCHDOG.in_flight(),
        }
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(self.last, indent=1) + "\n")
        tmp.replace(self.run_dir / "status.json")
        self.control.publish.remote(self.last)

    def close(self) -> None:
        try:
            ray.kill(self.control)
        except Exception:  # noqa: BLE001 - already gone
            pass


def format_status(status: dict) -> str:
    """`alignray status` as a person reads it."""
    if not status:
        return "no status yet (the run has not finished its first step)"
    calls = status.get("calls") or []
    in_flight = "  calls in flight: " + (", ".join(f"{c['member']} {c['call']} {c['age_s']:.0f}s"
                                                   for c in calls) if calls else "none over 1s")
    if "step" not in status:
        return f"run {status['run_dir']}: starting (no step has ended yet)\n{in_flight}"
    lines = [f"run {status['run_dir']}: step {status['step']}/{status['steps']}, policy version "
             f"{status['policy_version']}, {status['samples_per_s']:.1f} samples/s, generate-wait share "
             f"{status['generate_wait_share']:.2f}, score-wait share {status['score_wait_share']:.2f}"
             + ("" if time.time() - status["updated"] < 600 else " (not updated for 10+ minutes)")]
    for role, pool in status["pools"].items():
        members = ", ".join(f"{name} {state}" for name, state in pool["members"].items())
        auto = pool["autoscale"]
        lines.append(f"  {role}: target {pool['target']}"
                     + (f" (autoscale {auto['min']}–{auto['max']})" if auto else "") + f": {members}")
    if status.get("queued_requests"):
        lines.append(f"  queued scale requests: {status['queued_requests']}")
    lines.append(in_flight)
    lines += ["  recent faults:"] + [f"    {line}" for line in status["recent_faults"][-5:]] \
        if status["recent_faults"] else ["  recent faults: none"]
    return "\n".join(lines)
