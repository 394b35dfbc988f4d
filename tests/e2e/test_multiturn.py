"""Multi-turn episodes for real: a user's environment (tests/e2e/episode_env.py, not alignray's) drives 2-turn
episodes through `alignray train` in both layouts — rollout and reward workers (its reward rises over
30 steps), and colocated learner ranks — and the rollouts Parquet shows the turns with the observation masked
out; a rollout worker killed in the middle of an episode (and once more at a seeded random moment) costs its
shard's whole episodes, which are generated again, and every invariant holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides
from episode_env import INSTRUCTION

from alignray.actors.chaos import ChaosMonkey
from alignray.config import load_config
from alignray.data import load_prompts
from alignray.driver.controller import Controller
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics
from alignray.tokenizer import build_byte_tokenizer

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
EPISODES = {"rollout.max_turns": 2, "reward.scorers": "[]", "rollout.max_new_tokens": 16}


def check_run(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The invariants of the run, its metrics, and its rollouts as rows, every episode whole: two turns, the
    instruction's tokens masked out (and only those), the episode reward the sum of its turns'."""
    cfg = load_config(run_dir / "config.yaml")
    ids = load_prompts(cfg.data, build_byte_tokenizer()).table.column("prompt_id").to_pylist()
    metrics, table = read_metrics(run_dir), pq.read_table(run_dir / "rollouts")
    problems = check_invariants(cfg, metrics, table, ids)
    assert not any(problems.values()), problems
    assert {"num_turns", "loss_mask", "turn_rewards", "reward_env"} <= set(table.column_names)
    instruction = build_byte_tokenizer().encode(INSTRUCTION)
    rows = table.to_pylist()
    for r in rows:
        mask, tokens = np.array(r["loss_mask"]), np.array(r["response_tokens"])
        assert r["num_turns"] == 2 and r["finish_reason"] == "stop" and r["env_error"] is None
        assert tokens[mask == 0].tolist() == instruction  # the observation, and nothing else, is masked out
        start = int(np.argmin(mask))
        assert tokens[start:start + len(instruction)].tolist() == instruction and mask[:start].all()
        assert (np.array(r["response_logprobs"])[mask == 0] == 0).all()
        assert r["reward_env"] == pytest.approx(sum(r["turn_rewards"])) == pytest.approx(r["reward"])
    return metrics, rows


def train_episodes(tmp_path: Path, steps: int, colocate: bool) -> tuple[list[dict], list[dict]]:
    """`alignray train rollout.env=episode_env:Quiz rollout.max_turns=2 "reward.scorers=[]"`, `steps` steps of
    16 prompts × 4 samples; the run's metrics and rollouts, checked by `check_run`."""
    env = {**os.environ, "PYTHONPATH": str(HERE), "DS_ACCELERATOR": "cpu"}
    overrides = tiny_overrides(**{**EPISODES, "rollout.env": "episode_env:Quiz", "train.steps": steps,
                                  "train.prompts_per_step": 16, "rollout.samples_per_prompt": 4,
                                  "train.colocate": colocate})
    run = subprocess.run([sys.executable, "-m", "alignray.cli", "train", "--run-dir", str(tmp_path / "run"),
                          *overrides], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    metrics, rows = check_run(tmp_path / "run")
    assert len(rows) == steps * 16 * 4
    assert [m["reward/mean"] for m in metrics] == [m["reward/env/mean"] for m in metrics]  # the env's only
    assert all(m["episode/turns/mean"] == 2.0 for m in metrics)
    return metrics, rows


def test_a_users_environment_learns(tmp_path):
    """30 steps: the environment's reward (the vowel share of the answer after the instruction) rises from
    ≈0.03 to ≈0.4 (measured, in both layouts; the colocated layout's learning with one-turn rewards is
    tests/e2e/test_colocate.py's)."""
    metrics, _ = train_episodes(tmp_path, 30, colocate=False)
    curve = [m["reward/env/mean"] for m in metrics]
    first, last = np.mean(curve[:6]), np.mean(curve[-6:])
    assert last > first + 0.15, curve


def test_colocated_ranks_run_whole_episodes(tmp_path):
    """The colocated layout: the learner ranks play the episodes (whole, masked, rewarded per turn)."""
    train_episodes(tmp_path, 3, colocate=True)


def test_a_rollout_worker_killed_mid_episode_costs_whole_episodes(ray_cluster, tmp_path, capsys):
    """Episodes on 2 rollout workers; the environment kills its own worker (`kill -9`) between the turns of
    the episode a seeded draw picks (in step 3), and the chaos monkey kills a rollout worker at a seeded
    random moment. Every step still trains on exactly 8 × 2 whole episodes."""
    (tmp_path / "kills").mkdir()
    overrides = tiny_overrides(**{**EPISODES, "rollout.env": "tests.e2e.episode_env:Chaos",
                                  "rollout.env_kwargs": json.dumps({"kill_dir": str(tmp_path / "kills"),
                                                                    "seed": 4, "rate": 0.03}),
                                  "train.steps": 8, "train.prompts_per_step": 8, "rollout.num_workers": 2,
                                  "rollout.num_cpus": 0.5, "reward.num_cpus": 0.5, "train.max_restarts": 20})
    cfg = load_config(None, overrides)
    controller = Controller(cfg, tmp_path / "run")
    monkey = ChaosMonkey(controller, seed=5, mean_interval_s=4.0, mix={"rollout": 1.0}, max_kills=1).start()
    try:
        history = controller.run()
    finally:
        monkey.stop()
        controller.close()
    assert len(list((tmp_path / "kills").glob("kill-*"))) == 1  # the environment's own kill happened
    assert not controller.ledger.in_flight
    _, rows = check_run(tmp_path / "run")
    assert len(rows) == 8 * 8 * 2
    deaths = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert deaths and all(e["role"] == "rollout" for e in deaths)
    assert any("prompts requeued" in e["action"] for e in deaths)
    assert history[-1]["fault/requeued"] >= 4 and history[-1]["fault/restarts/rollout"] == len(deaths)
    assert "Traceback" not in capsys.readouterr().err
