"""length-bias: does a causal (MMD) reward model stop rewarding length that labellers rewarded by mistake?

Generator (seeded): a response is L ~ U{4..24} word tokens, each 'g*' (good) with probability q ~ U(0, 1),
else 'b*'. Hidden quality = the share of good tokens. Training labels: P(A ≻ B) = σ(8 (q_A - q_B) + 1.5 (L_A -
L_B) / 6) — the labellers follow quality plus a direct bias toward longer responses. Test labels: the higher
hidden quality wins; length is independent of quality in both splits. Backbone: a tiny random BERT (quality is
a token pattern; the pretrained encoder adds nothing here). Reported: pairwise accuracy on hidden quality and
Spearman(reward, length) over all test responses, for plain BT and the unconditional/conditional causal RM
over a λ sweep (kernel σ = 1).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from alignray.rm import RewardTrainConfig
from alignray.rm.backbones import TinyModelSpec
from alignray.rm.evaluate import evaluate_reward_model
from alignray.rm.loop import train_reward_model
from alignray.rm.preference_data import PreferenceData
from rm_bench.common import finish, format_rows, quiet_transformers

QUALITY_SCALE, LENGTH_BIAS, LENGTH_SCALE = 8.0, 1.5, 6.0


def response(rng: np.random.Generator) -> tuple[str, float, int]:
    length = int(rng.integers(4, 25))
    good = rng.uniform(size=length) < rng.uniform()
    words = [f"g{rng.integers(10)}" if g else f"b{rng.integers(10)}" for g in good]
    return " ".join(words), float(good.mean()), length


def make_data(n: int, seed: int, biased_labels: bool) -> PreferenceData:
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected, lengths, quality = [], [], [], [], []
    while len(prompts) < n:
        (ta, qa, la), (tb, qb, lb) = response(rng), response(rng)
        if biased_labels:
            logit = QUALITY_SCALE * (qa - qb) + LENGTH_BIAS * (la - lb) / LENGTH_SCALE
            a_wins = rng.uniform() < 1.0 / (1.0 + np.exp(-logit))
        elif qa == qb:
            continue
        else:
            a_wins = qa > qb
        (tc, qc, lc), (tr, qr, lr) = ((ta, qa, la), (tb, qb, lb)) if a_wins else ((tb, qb, lb), (ta, qa, la))
        prompts.append(f"p{rng.integers(20)} p{rng.integers(20)}")
        chosen.append(tc)
        rejected.append(tr)
        lengths.append([lc, lr])
        quality.append([qc, qr])
    return PreferenceData(prompts, chosen, rejected, {"length": np.array(lengths),
                                                      "quality": np.array(quality)},
                          source=f"length-bias seed {seed}")


def run(out: str | None = None, quick: bool = False) -> dict[str, Any]:
    started = time.time()
    quiet_transformers()
    torch.manual_seed(0)
    train = make_data(800 if quick else 2000, seed=0, biased_labels=True)
    test = make_data(400 if quick else 600, seed=1, biased_labels=False)
    tiny = TinyModelSpec(arch="bert", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4)
    base = {"tiny_model": tiny, "epochs": 3, "batch_size": 64, "lr": 1e-3, "max_length": 40,
            "mmd_attribute": "length", "mmd_bins": "quantile", "mmd_num_bins": 10, "mmd_bandwidth": 1.0}
    lambdas = [1.0] if quick else [0.1, 1.0, 10.0]
    variants = [("bt", "-", 0.0)] + [("causal", mode, lam) for mode in ("unconditional", "conditional")
                                     for lam in lambdas]
    train_chosen_longer = float(np.mean(train.attributes["length"][:, 0] > train.attributes["length"][:, 1]))
    rows = []
    for kind, mode, lam in variants:
        cfg = RewardTrainConfig(kind=kind, mmd_lambda=lam,
                                mmd_mode=mode if kind == "causal" else "conditional", **base)
        model = train_reward_model(cfg, train)
        metrics = evaluate_reward_model(model, test, batch_size=128)
        rows.append({"model": kind, "mmd_mode": mode, "lambda": lam, "accuracy": metrics["accuracy"],
                     "spearman_length": metrics["spearman"]["length"],
                     "spearman_quality": metrics["spearman"]["quality"], "ece": metrics["ece"]})
    bt = rows[0]
    for row in rows:
        row["abs_rho_ratio"] = abs(row["spearman_length"]) / max(abs(bt["spearman_length"]), 1e-12)
        row["acc_drop_pts"] = 100 * (bt["accuracy"] - row["accuracy"])
        row["meets_goal"] = (row["model"] == "causal" and row["abs_rho_ratio"] <= 0.5
                             and row["acc_drop_pts"] <= 3)
    results = {"rows": rows, "train_share_chosen_longer": train_chosen_longer,
               "goal": "|rho(reward, length)| <= 0.5 x BT's with accuracy within 3 points of BT's",
               "met_by": [f"{r['mmd_mode']} lambda={r['lambda']}" for r in rows if r["meets_goal"]]}
    table = format_rows(f"length-bias (train: chosen longer in {train_chosen_longer:.0%} of pairs; "
                        "test: length ⟂ quality)", rows,
                        ["model", "mmd_mode", "lambda", "accuracy", "spearman_length", "abs_rho_ratio",
                         "acc_drop_pts", "spearman_quality", "ece", "meets_goal"])
    return finish("length-bias", results, table, out, started)
