"""overoptimisation: best-of-n against proxy reward models vs a hidden gold reward (Gao et al. 2022 setup,
ensembles after Coste et al., arXiv 2310.02743; WARM, arXiv 2401.12187).

Generator (seeded): a response is L tokens, each 'g*' (good) with probability q ~ U(0, 1), else 'b*'. Gold
reward = share of good tokens + 0.03 · min(L, 16) - 0.06 · max(0, L - 16): more detail helps up to 16 tokens,
rambling beyond hurts. The proxies only ever see L ∈ [4, 16] in training (where longer is better), so long
responses are out of distribution for them and they can only extrapolate. Proxies: tiny BERTs trained on a
limited set of pairs whose gold labels are flipped with probability 0.25. The best-of-n pool holds responses
with L up to 40. Best-of-n expectation is exact over the pool: with proxy ranks i = 1..N (ascending), P(pick
i) = C(i-1, n-1)/C(N, n) (n drawn without replacement); KL(best-of-n ‖ base) = log n - (n-1)/n.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy.special import gammaln

from alignray.rewards.ensemble import aggregate
from alignray.rewards.ensemble_models import EnsembleRewardModel, warm_model
from alignray.rm import RewardTrainConfig
from alignray.rm.backbones import TinyModelSpec
from alignray.rm.loop import build_reward_model, fit, seed_everything, train_reward_model
from alignray.rm.preference_data import PreferenceData
from rm_bench.common import finish, format_rows, quiet_transformers

FLIP_RATE, TRAIN_MAX_LEN, POOL_MAX_LEN, LENGTH_BONUS, LENGTH_PENALTY = 0.25, 16, 40, 0.03, 0.06
N_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


def response(rng: np.random.Generator, max_len: int) -> tuple[str, float]:
    length = int(rng.integers(4, max_len + 1))
    good = rng.uniform(size=length) < rng.uniform()
    text = " ".join(f"g{rng.integers(10)}" if g else f"b{rng.integers(10)}" for g in good)
    gold = (good.mean() + LENGTH_BONUS * min(length, TRAIN_MAX_LEN)
            - LENGTH_PENALTY * max(0, length - TRAIN_MAX_LEN))
    return text, float(gold)


def make_train(n: int, seed: int) -> PreferenceData:
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected, gold = [], [], [], []
    while len(prompts) < n:
        a, b = response(rng, TRAIN_MAX_LEN), response(rng, TRAIN_MAX_LEN)
        if a[1] == b[1]:
            continue
        (c, r) = (a, b) if (a[1] > b[1]) != (rng.uniform() < FLIP_RATE) else (b, a)
        prompts.append("answer")
        chosen.append(c[0])
        rejected.append(r[0])
        gold.append([c[1], r[1]])
    return PreferenceData(prompts, chosen, rejected, {"gold": np.array(gold)}, source=f"overopt seed {seed}")


def best_of_n_gold(proxy: np.ndarray, gold: np.ndarray, n: int) -> float:
    """E[gold of the proxy-argmax among n pool items drawn without replacement], exact."""
    order = np.argsort(proxy, kind="stable")
    big_n = len(proxy)
    i = np.arange(1, big_n + 1)
    log_w = np.full(big_n, -np.inf)
    ok = i >= n
    log_w[ok] = (gammaln(i[ok]) - gammaln(n) - gammaln(i[ok] - n + 1)) - (
        gammaln(big_n + 1) - gammaln(n + 1) - gammaln(big_n - n + 1))
    return float(np.sum(np.exp(log_w) * gold[order]))


def seed_curves(train: PreferenceData, pool_text: list[str], pool_gold: np.ndarray, k: int, seed: int,
                quick: bool) -> dict[str, list[float]]:
    """Train k independent proxies and k same-init proxies (for WARM) with one seed; best-of-n gold per
    method."""
    tiny = TinyModelSpec(arch="bert", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=64)
    cfg = RewardTrainConfig(kind="ensemble", ensemble_type="independent", ensemble_size=k, tiny_model=tiny,
                            epochs=4 if quick else 8, batch_size=32, lr=1e-3, max_length=48, seed=seed * 100)
    ensemble = train_reward_model(cfg, train)
    tokenizer = ensemble.members[0].tokenizer
    same_init = []  # WARM: members from ONE initialisation that differ only in data order
    for i in range(k):
        seed_everything(cfg.seed)
        member_cfg = cfg.model_copy(update={"kind": "bt"})
        same_init.append(fit(build_reward_model(member_cfg, tokenizer), member_cfg, train,
                             order_seed=cfg.seed + 50 + i))
    prompts = ["answer"] * len(pool_text)
    members = np.stack([m.score(prompts, pool_text, 256)["reward"] for m in ensemble.members])
    proxies = {
        "ensemble mean": aggregate(members, "mean"),
        "ensemble lcb (β=1)": aggregate(members, "lcb", 1.0),
        "worst-case (min)": aggregate(members, "worst_case"),
        "uncertainty-weighted (λ=0.5)": aggregate(members, "uncertainty_weighted", 0.5),
        "WARM (weight average)": warm_model(same_init).score(prompts, pool_text, 256)["reward"],
        "prediction ensemble (same init)": EnsembleRewardModel(same_init, "mean").score(prompts, pool_text,
                                                                                         256)["reward"],
        "gold (oracle)": pool_gold,
    }
    curves = {"single (mean of k curves)": [float(np.mean([best_of_n_gold(m, pool_gold, n) for m in members]))
                                            for n in N_VALUES]}
    curves.update({name: [best_of_n_gold(p, pool_gold, n) for n in N_VALUES] for name, p in proxies.items()})
    return curves


def run(out: str | None = None, quick: bool = False) -> dict[str, Any]:
    started = time.time()
    quiet_transformers()
    k = 5
    seeds = [0] if quick else [0, 1, 2]
    train = make_train(300 if quick else 500, seed=0)
    rng = np.random.default_rng(7)
    pool = [response(rng, POOL_MAX_LEN) for _ in range(1500 if quick else 3000)]
    pool_text, pool_gold = [t for t, _ in pool], np.array([g for _, g in pool])
    per_seed = [seed_curves(train, pool_text, pool_gold, k, seed, quick) for seed in seeds]
    curves = {name: np.mean([c[name] for c in per_seed], axis=0).tolist() for name in per_seed[0]}
    rows = [{"n": n, "kl": float(np.log(n) - (n - 1) / n), **{name: curves[name][j] for name in curves}}
            for j, n in enumerate(N_VALUES)]
    last = {name: c[-1] for name, c in curves.items()}
    single = last["single (mean of k curves)"]
    results = {"n_values": list(N_VALUES), "curves": curves, "seeds": seeds, "pool_size": len(pool_text),
               "train_pairs": len(train), "flip_rate": FLIP_RATE,
               "pool_share_out_of_distribution": float(np.mean([len(t.split()) > TRAIN_MAX_LEN
                                                                for t in pool_text])),
               "at_max_n": last,
               "at_max_n_per_seed": [{name: c[name][-1] for name in c} for c in per_seed],
               "worst_case_beats_single": last["worst-case (min)"] > single,
               "uwo_beats_single": last["uncertainty-weighted (λ=0.5)"] > single,
               "warm_vs_prediction_ensemble": (last["WARM (weight average)"]
                                               - last["prediction ensemble (same init)"])}
    table = format_rows(f"overoptimisation: gold reward of best-of-n (k={k}, {len(train)} train pairs, "
                        f"{FLIP_RATE:.0%} flipped, mean of {len(seeds)} training seeds)", rows, ["n", "kl",
                                                                                                 *curves])
    return finish("overoptimisation", results, table, out, started)
