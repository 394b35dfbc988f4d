"""Actors die the way they do in production: `kill -9` of the real process (its pid from Ray) at random,
seeded moments, and at the awkward ones — while weights load, during a learner step. The run must finish on
its own and the invariants of `alignray.driver.invariants` must hold whatever the timing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides

from alignray.actors.chaos import ChaosMonkey
from alignray.actors.groups import LearnerGroup
from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics

pytestmark = pytest.mark.slow

FAULTY = {"train.steps": 8, "rollout.num_workers": 2, "reward.num_workers": 2, "rollout.num_cpus": 0.5,
          "reward.num_cpus": 0.5, "train.snapshot_interval": 2, "train.max_restarts": 20}


def start(tmp_path, name: str, **overrides) -> tuple[object, Controller]:
    cfg = load_config(None, tiny_overrides(**{**FAULTY, **overrides}))
    return cfg, Controller(cfg, tmp_path / name)


def finish(cfg, controller: Controller, on_step=None) -> list[dict]:
    try:
        history = controller.run(on_step=on_step)
    finally:
        controller.close()
    run_dir = controller.run_dir
    ids = controller.prompts.table.column("prompt_id").to_pylist()
    problems = check_invariants(cfg, read_metrics(run_dir), pq.read_table(run_dir / "rollouts"), ids)
    assert not any(problems.values()), problems
    assert not controller.ledger.in_flight
    return history


def events(controller: Controller) -> list[dict]:
    path = controller.run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kill_later(pid: int, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), os.kill(pid, signal.SIGKILL)), daemon=True)
    thread.start()
    return thread


def test_kills_at_random_moments_over_every_role(ray_cluster, tmp_path, capsys):
    """4 kills, Poisson-timed (seed 7), victims drawn over rollout, reward and learner processes."""
    cfg, controller = start(tmp_path, "chaos", **{"train.steps": 12})
    monkey = ChaosMonkey(controller, seed=7, mean_interval_s=2.5, max_kills=4).start()
    try:
        history = finish(cfg, controller)
    finally:
        kills = monkey.stop()
    assert len(history) >= 12 and kills, "the monkey killed nobody"
    recorded = events(controller)
    assert 1 <= len(recorded) <= len(kills) + 1  # a kill after the last use of an idle actor goes unnoticed
    err = capsys.readouterr().err
    assert "Traceback" not in err and "alignray: warning:" in err
    last = read_metrics(controller.run_dir)[-1]
    assert sum(last[f"fault/restarts/{role}"] for role in ("rollout", "reward", "learner")) == len(recorded)


def test_rollout_worker_killed_while_loading_weights(ray_cluster, tmp_path):
    """At every sync from step 2 on one rollout worker is killed a random 0–10 ms after the update is sent."""
    cfg, controller = start(tmp_path, "sync", **{"train.steps": 6})
    rng, pool = random.Random(3), controller.rollout
    original = pool.broadcast

    def broadcast_with_a_death(method, timeout, *args):
        pids = pool.pids()
        if controller.step >= 2 and pids:
            kill_later(pids[rng.choice(sorted(pids))], rng.uniform(0, 0.01))
        return original(method, timeout, *args)

    pool.broadcast = broadcast_with_a_death
    sizes: list[int] = []
    finish(cfg, controller, on_step=lambda m: sizes.append(len(pool.members)))
    rollout_faults = [e for e in events(controller) if e["role"] == "rollout"]
    assert len(rollout_faults) >= 3 and all(e["cause"] in ("died", "unreachable") for e in rollout_faults)
    assert sizes == [2] * 6  # replacements keep the pool at its target size


def test_learner_rank_killed_during_a_step_is_recovered_from_the_snapshot(ray_cluster, tmp_path, monkeypatch):
    """Rank 1 is killed a random 0–20 ms after step 5's learner step is sent (during it, or during the weight
    sync right after): a fresh group loads the step-4 snapshot, and the run ends at step 8 with every
    invariant intact."""
    cfg, controller = start(tmp_path, "learner")
    original, rng = LearnerGroup.train, random.Random(11)

    def train_with_a_death(group, refs):
        if controller.step == 4 and not events(controller):
            kill_later(group.rank_pids["learner-1"], rng.uniform(0, 0.02))
        return original(group, refs)

    monkeypatch.setattr(LearnerGroup, "train", train_with_a_death)
    history = finish(cfg, controller)
    (event,) = events(controller)
    assert event["role"] == "learner" and event["step"] in (4, 5) and "from step 4" in event["action"]
    metrics = read_metrics(controller.run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert [m["policy_version"] for m in metrics] == list(range(8))
    assert history[-1]["fault/restarts/learner"] == 1
    assert history[-1]["fault/steps_retrained"] == event["step"] - 4
