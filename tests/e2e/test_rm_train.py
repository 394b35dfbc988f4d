"""`alignray rm train` on Ray with 2 DeepSpeed ranks (gloo), then the trained model scores inside an RL
run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import tiny_overrides, write_jsonl

from alignray.cli import main
from alignray.config import load_config
from alignray.driver.controller import Controller

pytestmark = pytest.mark.slow


def vowel_pairs(n: int, seed: int) -> list[dict]:
    """Chosen answers are vowel words, rejected ones consonant words; lengths vary independently on both
    sides."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = rng.integers(2, 7, size=2)
        rows.append({"prompt": f"say something {rng.integers(4)}", "chosen": " ".join(["aeiou"] * a),
                     "rejected": " ".join(["xkcd"] * b)})
    return rows


def test_rm_train_two_ranks_then_score_in_rl(ray_cluster, tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", vowel_pairs(64, 0))
    write_jsonl(tmp_path / "test.jsonl", vowel_pairs(24, 1))
    config = {
        "data": str(tmp_path / "train.jsonl"), "eval_data": str(tmp_path / "test.jsonl"),
        "model": {"kind": "causal", "mmd_attribute": "length_chars", "mmd_num_bins": 2, "mmd_lambda": "auto",
                  "mmd_auto_grid": [0.5],
                  "tiny_model": {"arch": "bert", "hidden_size": 32, "intermediate_size": 64,
                                 "num_hidden_layers": 1, "num_attention_heads": 4},
                  "epochs": 3, "batch_size": 8, "lr": 3e-3, "max_length": 32},
        "learner": {"num_ranks": 2, "zero_stage": 1},
    }
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "rm"
    assert main(["rm", "train", "--config", str(tmp_path / "rm.yaml"), "--run-dir", str(out)]) == 0
    assert "with 2 DeepSpeed ranks" in capsys.readouterr().out
    assert json.loads((out / "eval.json").read_text())["accuracy"] >= 0.9
    assert json.loads((out / "summary.json").read_text())["ranks"] == 2
    sweep = json.loads((out / "mmd_sweep.json").read_text())  # mmd_lambda: auto, chosen on a held-out 20 %
    assert sweep["chosen_lambda"] == 0.5 and sweep["metric"] == "mmd" and sweep["n_heldout"] == 13

    scorers = json.dumps([{"name": "vowels", "function": "vowel_ratio"},
                          {"name": "rm", "type": "model", "path": str(out / "model"), "weight": 0.5}])
    cfg = load_config(None, tiny_overrides(**{"train.steps": 2, "reward.scorers": scorers}))
    controller = Controller(cfg, tmp_path / "rl")
    try:
        history = controller.run()
    finally:
        controller.close()
    assert "reward/rm/mean" in history[-1]
    table = pq.read_table(tmp_path / "rl" / "rollouts")
    assert {"reward_rm", "reward_vowels"} <= set(table.column_names) and table.num_rows == 16
    total = np.asarray(table["reward_vowels"]) + 0.5 * np.asarray(table["reward_rm"])
    np.testing.assert_allclose(np.asarray(table["reward"]), total, rtol=1e-5, atol=1e-6)


def test_rm_train_without_arguments_trains_and_evaluates_the_built_in_example(ray_cluster, tmp_path, capsys):
    """`alignray rm train` alone (one epoch here): 2 DeepSpeed ranks on the embedded preference set, progress
    lines with loss and accuracy (a bar on a terminal), then the evaluation table and RUN/eval.json."""
    out = tmp_path / "rm"
    assert main(["rm", "train", "--run-dir", str(out), "epochs=1"]) == 0
    captured = capsys.readouterr()
    assert "the built-in example (causal reward model on builtin:restaurants" in captured.out
    steps = [line for line in captured.err.splitlines()
             if line.startswith("rm train [causal λ=1, 800 pairs] step ")]
    assert (steps[-1].startswith("rm train [causal λ=1, 800 pairs] step 25/25 loss=")
            and "accuracy=" in steps[-1])
    assert "with 2 DeepSpeed ranks" in captured.out and "bias gap concept=price" in captured.out
    results = json.loads((out / "eval.json").read_text())
    assert results["n_pairs"] == 400 and results["accuracy"] > 0.7
    assert set(results["bias_gap"]["concept"]) == {"none", "price", "ambience"}
    assert json.loads((out / "summary.json").read_text())["ranks"] == 2


def learner_pids() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "ray::RewardLearner"], capture_output=True,
                           text=True).stdout.split()
    return {int(pid) for pid in found}


def test_a_rank_killed_at_a_random_moment_is_one_clean_line(ray_cluster, tmp_path, capsys):
    """`kill -9` of one rank's real process a seeded random 1–15 s after both exist (while they start, join
    the process group or train): the run stops with one `alignray: error:` line naming one rank that died as
    the cause — never the survivor's broken-collective error, never a traceback. A kill after training ended
    may let the run finish."""
    rng = np.random.default_rng(4)
    before = learner_pids()
    victim: dict = {}

    def strike() -> None:
        for _ in range(1200):
            ranks = sorted(learner_pids() - before)
            if len(ranks) == 2:
                time.sleep(rng.uniform(1.0, 15.0))
                victim["pid"] = ranks[int(rng.integers(2))]  # pid order is not rank order
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                except ProcessLookupError:  # the run ended (and its ranks with it) before the kill
                    victim["gone"] = True
                return
            time.sleep(0.05)

    thread = threading.Thread(target=strike, daemon=True)
    thread.start()
    code = main(["rm", "train", "--run-dir", str(tmp_path / "rm"), "epochs=3"])
    thread.join(timeout=60)
    err = capsys.readouterr().err
    assert "pid" in victim and "Traceback" not in err
    assert code == 0 or not victim.get("gone")
    if code == 0:  # the kill landed after the ranks had finished
        assert (tmp_path / "rm" / "eval.json").exists()
        return
    lines = [line for line in err.splitlines() if line.startswith("alignray: error:")]
    assert code == 2 and len(lines) == 1, err
    # a survivor's broken-collective error may follow, never as the cause
    cause = lines[0].split(" (then ")[0]
    assert "died" in cause and sum(f"rm-learner-{r}" in cause for r in (0, 1)) == 1, lines[0]
