"""`train.colocate`: the learner ranks generate and score their share of each step themselves, with the module
they train. Real Ray, real DeepSpeed ranks (world size 2, gloo), and a `kill -9` of a rank at a seeded random
moment."""

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

from alignray.config import load_config
from alignray.driver.capacity import demands_of
from alignray.driver.controller import Controller, cpus_needed
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics
from alignray.errors import ConfigError


@pytest.mark.parametrize("override, field", [
    ("rollout.engine=vllm", "rollout.engine"),
    ("learner.zero_stage=3", "learner.zero_stage"),
    ("train.sync_interval=2", "train.sync_interval"),
    ("rollout.autoscale.max=3", "rollout.autoscale"),
])
def test_colocate_rejects_what_it_cannot_honour_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=f"train.colocate needs {field}"):
        load_config(None, ["train.colocate=true", override])


def test_a_colocated_run_asks_the_cluster_for_the_learner_ranks_only():
    cfg = load_config(None, ["train.colocate=true", "rollout.num_workers=3", "learner.num_cpus=1.5"])
    assert [(d.role, d.count, d.cpus) for d in demands_of(cfg)] == [("learner", 2, 1.5)]
    assert cpus_needed(cfg) == 3.0


def check(cfg, controller: Controller) -> list[dict]:
    run_dir = controller.run_dir
    ids = controller.prompts.table.column("prompt_id").to_pylist()
    metrics = read_metrics(run_dir)
    problems = check_invariants(cfg, metrics, pq.read_table(run_dir / "rollouts"), ids)
    assert not any(problems.values()), problems
    assert not controller.ledger.in_flight
    return metrics


def test_colocated_ranks_sample_with_the_weights_they_train(ray_cluster, tmp_path, capsys):
    """Each step's samples are stamped with the version that trained the step before, and the engine's
    log-probs equal the learner's recomputed ones: the ranks sample with the live, just-updated module. No
    worker starts besides the ranks, and a scale request is refused with one line while the run goes on."""
    cfg = load_config(None, tiny_overrides(**{"train.colocate": True, "train.steps": 5}))
    controller = Controller(cfg, tmp_path / "run")
    try:
        assert controller.rollout.ready() == controller.reward.ready() == ["learner-0", "learner-1"]
        controller.scaler.scale("rollout", 3, "requested")
        history = controller.run()
    finally:
        controller.close()
    metrics = check(cfg, controller)
    assert [m["policy_version"] for m in metrics] == list(range(5))
    assert all(m["staleness"] == 0 for m in history)
    assert all(abs(m["learner/logprob_mismatch"]) < 1e-4 for m in history), [m["learner/logprob_mismatch"]
                                                                          for m in history]
    assert sorted(pq.read_table(tmp_path / "run" / "rollouts").column("policy_version").to_pylist()) == \
        [v for v in range(5) for _ in range(4 * 2)]
    err = capsys.readouterr().err
    assert "rollout scale request to 3 ignored" in err and "learner.num_ranks" in err


@pytest.mark.slow
def test_a_rank_killed_at_a_random_moment_is_recovered(ray_cluster, tmp_path, capsys):
    """kill -9 of a random rank a seeded random 0–2 s after the first step: whatever the rank was doing
    (generating, scoring, training, in a collective), the group is rebuilt from the newest snapshot and the
    run ends with every invariant intact."""
    rng = random.Random(5)
    cfg = load_config(None, tiny_overrides(**{"train.colocate": True, "train.steps": 30,
                                              "train.snapshot_interval": 2, "train.max_restarts": 5}))
    controller = Controller(cfg, tmp_path / "run")
    victim, delay = rng.choice(["learner-0", "learner-1"]), rng.uniform(0.0, 2.0)
    pid = controller.learners.rank_pids[victim]
    armed: list[threading.Thread] = []

    def on_step(metrics: dict) -> None:
        if not armed:  # the clock starts once the loop runs; the kill lands wherever the ranks are by then
            armed.append(threading.Thread(target=lambda: (time.sleep(delay), os.kill(pid, signal.SIGKILL)),
                                          daemon=True))
            armed[0].start()

    try:
        controller.run(on_step=on_step)
    finally:
        controller.close()
    check(cfg, controller)
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["role"] for e in events] == ["learner"], events
    assert victim in events[0]["detail"]
    assert "Traceback" not in capsys.readouterr().err
