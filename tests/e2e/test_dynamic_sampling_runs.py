"""DAPO's dynamic sampling and overlong shaping in real runs (Ray actors, 2 DeepSpeed ranks on gloo).

The reward (tests/e2e/half_constant_reward.py) is constant on about half the prompts, so with
`algo.dynamic_sampling` every step drops groups and generates more prompts — over 10 prompts, so epochs turn
inside steps and a prompt can be drawn twice into one step — and each trained step still holds
`prompts_per_step × samples_per_prompt` unfiltered rows, the learner sees exactly those, the rollouts Parquet
keeps the filtered ones, a resumed run repeats the uninterrupted one, and rollout workers killed with kill -9
during extra rounds and a learner rank killed during a step (async mode) leave every invariant intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
import zlib
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_overrides

from alignray.algorithms.overlong import overlong_penalty
from alignray.config import load_config
from alignray.data import builtin_prompts
from alignray.driver.controller import Controller
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics

pytestmark = pytest.mark.slow

SCORER = json.dumps([{"name": "half", "function": "tests.e2e.half_constant_reward:score"}])
DAPO = {"reward.scorers": SCORER, "algo.dynamic_sampling": True, "algo.dynamic_sampling_max_rounds": 10,
        "algo.clip_eps_high": 0.28, "algo.overlong.mode": "penalty", "algo.overlong.buffer": 4}
ROWS = 4 * 2  # tiny_overrides: 4 prompts per step × 2 samples, max_new_tokens 8


def run(run_dir, resume: bool = False, on_controller=None, **overrides):
    cfg = load_config(run_dir / "config.yaml" if resume else None, tiny_overrides(**{**DAPO, **overrides}))
    controller = Controller(cfg, run_dir, resume=resume)
    if on_controller is not None:
        on_controller(controller)
    try:
        history = controller.run()
    finally:
        controller.close()
    ids = controller.prompts.table.column("prompt_id").to_pylist()
    problems = check_invariants(cfg, read_metrics(run_dir), pq.read_table(run_dir / "rollouts"), ids)
    assert not any(problems.values()), problems
    assert not controller.ledger.in_flight
    return history, controller


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> str:
    """The first 10 built-in prompts: 5 of them get the constant reward."""
    path = tmp_path_factory.mktemp("prompts") / "ten.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in builtin_prompts("vowels")[:10]))
    return str(path)


@pytest.fixture(scope="module")
def dapo_run(ray_cluster, tmp_path_factory, prompts):
    root = tmp_path_factory.mktemp("dapo")
    history, controller = run(root / "run", **{"train.steps": 4, "train.save_interval": 2,
                                               "data.prompts": prompts})
    return root / "run", history, controller


def rollouts_by_step(run_dir) -> dict[int, list[dict]]:
    rows = defaultdict(list)
    for path in sorted((run_dir / "rollouts").glob("step_*.parquet")):
        rows[int(path.name.split("_")[1])] += pq.read_table(path).to_pylist()
    return rows


def test_every_step_trains_on_full_informative_batches(dapo_run):
    run_dir, history, controller = dapo_run
    metrics = read_metrics(run_dir)
    assert [m["samples"] for m in metrics] == [ROWS] * 4
    assert sum(m["batch/filtered_groups"] for m in metrics) > 0
    assert max(m["batch/generation_rounds"] for m in metrics) > 1
    steps = rollouts_by_step(run_dir)
    for m in metrics:
        rows = steps[m["step"]]
        kept = [r for r in rows if not r["filtered"]]
        assert len(kept) == ROWS and len(rows) == 2 * m["batch/prompts"]
        groups = defaultdict(list)
        for r in rows:
            groups[r["prompt_id"]].append(r)
        dropped = [g for g in groups.values() if g[0]["filtered"]]
        assert sum(len(g) for g in dropped) == 2 * m["batch/filtered_groups"]  # dispatches of 2 samples
        for group in groups.values():  # a group is dropped whole, exactly when its rewards are all equal
            assert len({r["filtered"] for r in group}) == 1
            assert group[0]["filtered"] == (len({r["reward"] for r in group}) == 1)
            if zlib.crc32(group[0]["prompt"].encode()) % 2 == 0:  # the constant half: always dropped
                assert group[0]["filtered"]
        # the learner saw exactly the unfiltered rows: its token count is theirs
        tokens = sum(len(r["prompt_tokens"]) + len(r["response_tokens"]) for r in kept)
        assert m["learner/tokens"] == pytest.approx(tokens)
        # overlong penalty (L_max 8, L_cache 4) over the trained rows; the truncated share over all generated
        lengths = torch.tensor([len(r["response_tokens"]) for r in kept])
        assert m["batch/overlong_penalty"] == pytest.approx(float(overlong_penalty(lengths, 8, 4).mean()),
                                                            abs=1e-6)
        share = sum(r["finish_reason"] == "length" for r in rows) / len(rows)
        assert m["batch/truncated_share"] == pytest.approx(share)
    # every prompt generated was consumed once, filtered or not
    assert controller.ledger.counts["consumed"] == sum(m["batch/prompts"] for m in metrics)


def test_resume_repeats_the_dynamic_sampling_run(dapo_run, tmp_path):
    run_dir, history, _ = dapo_run
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step_4")
    resumed, _ = run(copy, resume=True, **{"train.steps": 4, "train.save_interval": 2})
    assert [m["step"] for m in resumed] == [3, 4]
    original, again = rollouts_by_step(run_dir), rollouts_by_step(copy)
    for step in (3, 4):
        for key in ("prompt_id", "response_tokens", "filtered"):
            assert [r[key] for r in again[step]] == [r[key] for r in original[step]], (step, key)
    for a, b in zip(history[2:], resumed, strict=True):
        for key in ("batch/prompts", "batch/filtered_groups", "batch/generation_rounds", "samples"):
            assert b[key] == a[key], key
        assert b["reward/mean"] == pytest.approx(a["reward/mean"], abs=1e-6)


def kill_later(pid: int, delay_s: float) -> None:
    threading.Thread(target=lambda: (time.sleep(delay_s), os.kill(pid, signal.SIGKILL)), daemon=True).start()


def test_kills_during_a_dynamic_sampling_run_keep_every_invariant(ray_cluster, tmp_path, prompts):
    """Async (max_staleness 1), 2 rollout and 2 reward workers, overlong filtering, a snapshot every 2 steps.
    Two of the first five extra generation rounds from step 2 on (seeded) lose the rollout worker that got
    them: the first at once (its prompts, drawn for the refill, are requeued and generated again), the second
    a seeded random 0–100 ms later. Learner rank 1 is killed a seeded random 0–20 ms after step 5's learner
    step is sent: the group is recovered from the step-4 snapshot and the ledger rolled back, extra rounds
    included."""
    rng, killed, extra_rounds = random.Random(5), [], [0]
    plan = sorted(rng.sample(range(1, 6), 2))

    def kill_during_the_run(controller: Controller) -> None:
        pipeline, group = controller.shards, controller.learners
        dispatch, train = pipeline.dispatch, group.train

        def dispatch_and_kill(step, prompts=None, first_part=0):
            shards = dispatch(step, prompts, first_part)
            if first_part and controller.step >= 1:
                extra_rounds[0] += 1
                if extra_rounds[0] in plan:
                    name = rng.choice(sorted(s.worker for s in shards))
                    pid = controller.rollout.pids()[name]
                    if killed:
                        kill_later(pid, rng.uniform(0, 0.1))
                    else:
                        os.kill(pid, signal.SIGKILL)
                    killed.append(name)
            return shards

        def train_and_kill(refs):
            if controller.step == 4 and "learner-1" not in killed:
                killed.append("learner-1")
                kill_later(group.rank_pids["learner-1"], rng.uniform(0, 0.02))
            return train(refs)

        pipeline.dispatch, group.train = dispatch_and_kill, train_and_kill

    history, controller = run(tmp_path / "chaos", on_controller=kill_during_the_run,
                              **{"train.steps": 6, "train.max_staleness": 1, "rollout.num_workers": 2,
                                 "reward.num_workers": 2, "rollout.num_cpus": 0.5, "reward.num_cpus": 0.5,
                                 "train.snapshot_interval": 2, "algo.overlong.mode": "filter",
                                 "data.prompts": prompts})
    assert len(killed) == 3, f"{killed}: only {extra_rounds[0]} extra rounds after step 1"
    events = [json.loads(line) for line in (tmp_path / "chaos" / "events.jsonl").read_text().splitlines()]
    rollout_deaths = {e["actor"] for e in events if e["role"] == "rollout"}
    (learner,) = [e for e in events if e["role"] == "learner"]
    assert set(killed[:2]) <= rollout_deaths and "from step 4" in learner["action"]
    assert history[-1]["fault/requeued"] >= 1  # the refill's prompts of the first victim, at least
    metrics = read_metrics(tmp_path / "chaos")
    assert [m["step"] for m in metrics] == list(range(1, 7)) and [m["samples"] for m in metrics] == [ROWS] * 6
    assert history[-1]["fault/steps_retrained"] == learner["step"] - 4
