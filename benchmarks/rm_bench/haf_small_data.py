"""haf-small-data: BT vs the DPO implicit reward vs HAF-RM (BT + 0.2·DPO) on small, noisy preference data.

Generator (seeded): responses of L tokens, each 'g*' (good) with probability q ~ U(0, 1), else 'b*' — a
token-level pattern; hidden quality = share of good tokens. Train: 200 pairs, L ∈ [4, 12], labels P(A ≻ B) =
σ(8 Δq) (noisy). Test in distribution: L ∈ [4, 12]; shifted: L ∈ [16, 28]; the higher hidden quality wins. All
three models share one architecture (tiny Llama trunk + LM head + zero-init reward head), differ only in the
loss: BT = reward head only (α = 0); DPO = LM head only, scored by β(log π - log π_ref); HAF = BT + 0.2 ·
DPO(β = 0.1), scored by the reward head. Mean and std over 3 seeds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from alignray.rm import RewardTrainConfig
from alignray.rm.backbones import TinyModelSpec
from alignray.rm.evaluate import pairwise_accuracy
from alignray.rm.loop import train_reward_model
from alignray.rm.preference_data import PreferenceData
from rm_bench.common import finish, format_rows, quiet_transformers


def response(rng: np.random.Generator, low: int, high: int) -> tuple[str, float]:
    length = int(rng.integers(low, high + 1))
    good = rng.uniform(size=length) < rng.uniform()
    return " ".join(f"g{rng.integers(10)}" if g else f"b{rng.integers(10)}" for g in good), float(good.mean())


def make_data(n: int, seed: int, lengths: tuple[int, int], noisy: bool) -> PreferenceData:
    rng = np.random.default_rng(seed)
    chosen, rejected = [], []
    while len(chosen) < n:
        (ta, qa), (tb, qb) = response(rng, *lengths), response(rng, *lengths)
        if qa == qb:
            continue
        a_wins = rng.uniform() < 1.0 / (1.0 + np.exp(-8.0 * (qa - qb))) if noisy else qa > qb
        chosen.append(ta if a_wins else tb)
        rejected.append(tb if a_wins else ta)
    return PreferenceData(["answer"] * n, chosen, rejected, source=f"haf-small-data seed {seed}")


def run(out: str | None = None, quick: bool = False) -> dict[str, Any]:
    started = time.time()
    quiet_transformers()
    seeds = [0] if quick else [0, 1, 2]
    tiny = TinyModelSpec(arch="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4)
    splits = {"in_distribution": make_data(400, 101, (4, 12), noisy=False),
              "shifted_length": make_data(400, 102, (16, 28), noisy=False)}
    variants = {"BT": {"haf_alpha": 0.0}, "DPO (implicit reward)": {"haf_alpha": 1.0, "haf_bt_weight": 0.0},
                "HAF-RM (α=0.2)": {"haf_alpha": 0.2}}
    scores: dict[str, dict[str, list[float]]] = {v: {s: [] for s in splits} for v in variants}
    for seed in seeds:
        train = make_data(200, seed, (4, 12), noisy=True)
        for name, overrides in variants.items():
            cfg = RewardTrainConfig(kind="haf", tiny_model=tiny, epochs=8, batch_size=16, lr=1e-3,
                                    max_length=40, seed=seed, dpo_beta=0.1, **overrides)
            model = train_reward_model(cfg, train)
            for split, data in splits.items():
                if name.startswith("DPO"):
                    rc = model.implicit_reward(data.prompts, data.chosen, cfg.dpo_beta, 128)
                    rr = model.implicit_reward(data.prompts, data.rejected, cfg.dpo_beta, 128)
                else:
                    rc = model.score(data.prompts, data.chosen, 128)["reward"]
                    rr = model.score(data.prompts, data.rejected, 128)["reward"]
                scores[name][split].append(pairwise_accuracy(rc, rr))
    rows = []
    for name, per_split in scores.items():
        row: dict[str, Any] = {"model": name}
        for split, accs in per_split.items():
            row[f"{split}_acc"] = float(np.mean(accs))
            row[f"{split}_std"] = float(np.std(accs))
        rows.append(row)
    results = {"rows": rows, "seeds": seeds, "train_pairs": 200, "per_seed": scores}
    table = format_rows(f"haf-small-data (200 noisy pairs, {len(seeds)} seeds; accuracy on hidden quality)",
                        rows, ["model", "in_distribution_acc", "in_distribution_std", "shifted_length_acc",
                         "shifted_length_std"])
    return finish("haf-small-data", results, table, out, started)
