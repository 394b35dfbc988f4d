"""The whole loop for real: Ray actors, 2 DeepSpeed ranks on gloo, Arrow through the object store.

One 4-step run (checkpoints at 2 and 4) feeds the run-directory and resume tests; further runs cover PPO with
ZeRO-3 in async mode, the pool scaling mid-run, and a reward that raises.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides

from alignray.cli import main
from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.driver.runlog import read_metrics

pytestmark = pytest.mark.slow

REQUIRED_METRICS = ["step", "policy_version", "reward/mean", "reward/std", "kl", "entropy",
                    "response_length/mean",
                    "loss/policy", "grad_norm", "timing/generate_s", "timing/reward_s", "timing/train_s",
                    "timing/sync_s", "throughput/samples_per_s", "throughput/tokens_per_s",
                    "reward/vowels/mean", "reward/length/mean", "reward/length_corr"]
ROLLOUT_COLUMNS = ["prompt_id", "sample_index", "prompt", "response", "prompt_tokens", "response_tokens",
                   "response_logprobs", "policy_version", "reward", "reward_vowels", "reward_length"]


def run(run_dir, resume=False, **overrides):
    cfg = load_config(run_dir / "config.yaml" if resume else None, tiny_overrides(**overrides))
    controller = Controller(cfg, run_dir, resume=resume)
    try:
        history = controller.run()
        ledger = controller.ledger
    finally:
        controller.close()
    return history, ledger


@pytest.fixture(scope="module")
def four_steps(ray_cluster, tmp_path_factory):
    """4 steps over a prompt file with one malformed line, skipped by policy; checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("loop")
    lines = [json.dumps({"prompt": f"Tell me about thing {i}."}) for i in range(12)]
    (root / "prompts.jsonl").write_text("\n".join(lines[:5] + ["{broken"] + lines[5:]) + "\n")
    history, ledger = run(root / "run", **{"train.steps": 4, "train.save_interval": 2,
                                           "data.prompts": str(root / "prompts.jsonl"),
                                           "data.on_bad_row": "skip"})
    return root / "run", history, ledger


def test_run_directory_contract(four_steps):
    run_dir, history, ledger = four_steps
    assert (run_dir / "config.yaml").is_file()
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for key in REQUIRED_METRICS:
        assert key in metrics[-1], key
    table = pq.read_table(run_dir / "rollouts")
    assert table.num_rows == 4 * 4 * 2  # steps × prompts × samples: one row per sample
    assert set(ROLLOUT_COLUMNS) <= set(table.column_names)
    versions = sorted(set(table.column("policy_version").to_pylist()))
    assert versions == [0, 1, 2, 3]  # sync mode: step s trains on samples of version s-1
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert not ledger.in_flight and ledger.counts["consumed"] == 16
    skipped = json.loads((run_dir / "skipped_prompts.json").read_text())
    assert skipped["bad_json"] == 1 and skipped["source"].endswith("prompts.jsonl")
    assert 6 not in table.column("prompt_id").to_pylist()  # line 6 was the broken one


def test_checkpoint_has_deepspeed_state_and_hf_folder(four_steps):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, *_ = four_steps
    step_dir = run_dir / "checkpoints" / "step_4"
    assert (step_dir / "policy").is_dir() and (step_dir / "controller.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(step_dir / "hf")
    tok = AutoTokenizer.from_pretrained(step_dir / "hf")
    assert model.config.vocab_size == len(tok) == 259


def test_resume_reproduces_the_uninterrupted_run(four_steps, tmp_path):
    """Resume from step 2: model, optimizer, data position and sampling seeds restored, so steps 3-4 match."""
    run_dir, history, _ = four_steps
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step_4")
    resumed, _ = run(copy, resume=True, **{"train.steps": 4, "train.save_interval": 2})
    assert [m["step"] for m in resumed] == [3, 4]
    assert [m["step"] for m in read_metrics(copy)] == [1, 2, 3, 4]
    original = pq.read_table(run_dir / "rollouts" / "step_000003_000.parquet")
    again = pq.read_table(copy / "rollouts" / "step_000003_000.parquet")
    assert again.column("prompt_id").to_pylist() == original.column("prompt_id").to_pylist()
    assert again.column("response_tokens").to_pylist() == original.column("response_tokens").to_pylist()
    for a, b in zip(history[2:], resumed, strict=True):
        assert b["reward/mean"] == pytest.approx(a["reward/mean"], abs=1e-6)
        assert b["loss/policy"] == pytest.approx(a["loss/policy"], abs=1e-4)


def test_ppo_zero3_async_staleness_bound(ray_cluster, tmp_path):
    history, ledger = run(tmp_path / "ppo", **{"algo.name": "ppo", "learner.zero_stage": 3,
                                                "train.max_staleness": 1, "algo.kl_coef": 0.01})
    assert all(0 <= m["staleness"] <= 1 for m in history)
    assert any(m["staleness"] == 1 for m in history)
    assert all("loss/value" in m for m in history)
    assert not ledger.in_flight


def test_pool_scales_through_the_control_file(ray_cluster, tmp_path):
    """After step 1 the user asks for 2 rollout workers through RUN_DIR/control.yaml; the new member loads the
    current weights first and takes work from the next step on. (Deaths at random moments:
    tests/e2e/test_faults.py.)"""
    cfg = load_config(None, tiny_overrides(**{"train.steps": 3, "rollout.num_cpus": 0.5}))
    controller = Controller(cfg, tmp_path / "scale")

    def ask_for_two(metrics: dict) -> None:
        if metrics["step"] == 1:
            (tmp_path / "scale" / "control.yaml").write_text("rollout_workers: 2\n")

    try:
        history = controller.run(on_step=ask_for_two)
    finally:
        controller.close()
    assert [m["samples"] for m in history] == [8, 8, 8]
    assert history[0]["rollout/workers"] == 1 and history[-1]["rollout/workers"] == 2
    assert [m["policy_version"] for m in history] == [0, 1, 2]  # the new member loaded the current weights
    assert controller.ledger.counts["consumed"] == 12 and not controller.ledger.in_flight


def test_reward_that_raises_is_reported_by_sample_id(ray_cluster, tmp_path, capsys):
    scorer = json.dumps([{"name": "len", "function": "length_target", "kwargs": {"target": 0}}])
    code = main(["train", "--run-dir", str(tmp_path / "bad"), *tiny_overrides(), f"reward.scorers={scorer}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "reward failed for prompt_id=" in err and "raised ZeroDivisionError" in err
    assert "Traceback" not in err
    # the failed run closed its actors: none of its placement groups is left in the (shared) cluster
    live = [pg["name"] for pg in ray_cluster.util.placement_group_table().values()
            if pg["state"] != "REMOVED" and pg["name"].startswith("alignray-")]
    assert not live, live
