"""noisy-raters: ENCORE entropy weights vs uniform, random and the best single head of a multi-head RM.

Generator (seeded): a response has L ~ U{12..24} tokens 'a<k><g|b><d>': aspect k of 3 (uniform), good with
probability q_k ~ U(0, 1) (one per aspect), digit d from a per-response Dirichlet(0.3) over 0..9 (a style
feature unrelated to quality). Hidden quality Q = mean_k q̂_k (q̂_k = share of good tokens of aspect k). K = 6
rules; rule k judges aspect k mod 3 (two raters per aspect). It rates attentively with probability ρ_k —
rating σ(20 (q̂ - 0.5)), decisive, so low entropy — and otherwise by style: the share of tokens whose digit
lies in a rule-specific half of 0..9 (spread over [0, 1], high entropy, no signal). ρ = (0.95, 0.85, 0.7, 0.4,
0.15, 0.0): rules 3-5 are noisier (some near random) duplicates of rules 0-2. A multi-head tiny BERT is
trained by MSE on the ratings; test pairs are ordered by Q. ENCORE: w = softmax(-H/τ), τ = 2, 10 equal-width
levels on [0, 1], bits.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from alignray.rewards.encore import encore_weights
from alignray.rm import RewardTrainConfig
from alignray.rm.backbones import TinyModelSpec
from alignray.rm.evaluate import pairwise_accuracy
from alignray.rm.loop import train_reward_model
from alignray.rm.preference_data import PreferenceData
from rm_bench.common import finish, format_rows, quiet_transformers

ATTENTIVENESS = (0.95, 0.85, 0.7, 0.4, 0.15, 0.0)
ASPECTS = 3
RULES = [f"rule{k}" for k in range(len(ATTENTIVENESS))]


def response(rng: np.random.Generator, style_sets: list[set[int]]) -> tuple[str, float, list[float]]:
    k_aspects = ASPECTS
    length = int(rng.integers(12, 25))
    q = rng.uniform(size=k_aspects)
    aspects = rng.integers(k_aspects, size=length)
    good = rng.uniform(size=length) < q[aspects]
    digits = rng.choice(10, size=length, p=rng.dirichlet(np.full(10, 0.3)))
    words = [f"a{a}{'g' if g else 'b'}{d}" for a, g, d in zip(aspects, good, digits, strict=True)]
    q_hat = np.array([good[aspects == k].mean() if np.any(aspects == k) else 0.5 for k in range(k_aspects)])
    ratings = []
    for k, rho in enumerate(ATTENTIVENESS):
        if rng.uniform() < rho:
            ratings.append(float(1.0 / (1.0 + np.exp(-20.0 * (q_hat[k % ASPECTS] - 0.5)))))
        else:
            ratings.append(float(np.isin(digits, list(style_sets[k])).mean()))
    return " ".join(words), float(q_hat.mean()), ratings


def make_data(n: int, seed: int) -> PreferenceData:
    """Pairs ordered by hidden quality Q (the chosen response has the higher Q), with every rule's rating."""
    style_rng = np.random.default_rng(1234)  # the rules' style halves are fixed across splits
    style_sets = [set(style_rng.choice(10, size=5, replace=False).tolist()) for _ in ATTENTIVENESS]
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected, quality, ratings = [], [], [], [], []
    while len(prompts) < n:
        a, b = response(rng, style_sets), response(rng, style_sets)
        if a[1] == b[1]:
            continue
        c, r = (a, b) if a[1] > b[1] else (b, a)
        prompts.append("rate this")
        chosen.append(c[0])
        rejected.append(r[0])
        quality.append([c[1], r[1]])
        ratings.append([c[2], r[2]])
    ratings_arr = np.array(ratings)  # [n, 2, K]
    return PreferenceData(prompts, chosen, rejected, {"quality": np.array(quality)},
                          {rule: ratings_arr[:, :, k] for k, rule in enumerate(RULES)},
                          source=f"noisy-raters seed {seed}")


def run(out: str | None = None, quick: bool = False) -> dict[str, Any]:
    started = time.time()
    quiet_transformers()
    torch.manual_seed(0)
    train = make_data(800 if quick else 2000, seed=0)
    test = make_data(400 if quick else 800, seed=1)
    tiny = TinyModelSpec(arch="bert", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4)
    cfg = RewardTrainConfig(kind="multihead", tiny_model=tiny, epochs=3 if quick else 6, batch_size=32,
                            lr=1e-3, max_length=32, encore_tau=2.0)
    model = train_reward_model(cfg, train)
    chosen = model.score(test.prompts, test.chosen, 128)
    rejected = model.score(test.prompts, test.rejected, 128)
    psi_c = np.stack([chosen[f"head_{r}"] for r in RULES], axis=1)
    psi_r = np.stack([rejected[f"head_{r}"] for r in RULES], axis=1)

    def accuracy(w: np.ndarray) -> float:
        return pairwise_accuracy(psi_c @ w, psi_r @ w)

    entropies = np.array(model.encore.entropies)
    head_acc = np.array([pairwise_accuracy(psi_c[:, k], psi_r[:, k]) for k in range(len(RULES))])
    rng = np.random.default_rng(0)
    random_acc = float(np.mean([accuracy(rng.dirichlet(np.ones(len(RULES)))) for _ in range(50)]))
    methods = {
        "encore_tau2": pairwise_accuracy(chosen["reward"], rejected["reward"]),
        "encore_tau1": accuracy(encore_weights(entropies, 1.0)),
        "encore_tau0.5": accuracy(encore_weights(entropies, 0.5)),
        "uniform": accuracy(np.full(len(RULES), 1.0 / len(RULES))),
        "random_mean50": random_acc,
        "best_single_head": float(head_acc.max()),
    }
    corr = float(np.corrcoef(entropies, head_acc)[0, 1])
    heads = [{"head": r, "attentiveness": rho, "entropy_bits": float(h), "weight": float(w),
              "accuracy": float(a)}
             for r, rho, h, w, a in zip(RULES, ATTENTIVENESS, entropies, model.encore.weights, head_acc,
                                        strict=True)]
    results = {"methods": methods, "heads": heads, "pearson_entropy_accuracy": corr,
               "encore_beats_uniform": methods["encore_tau2"] > methods["uniform"],
               "encore_beats_best_single": methods["encore_tau2"] > methods["best_single_head"]}
    table = "\n\n".join([
        format_rows("noisy-raters: heads (test pairs ordered by hidden quality)", heads,
                    ["head", "attentiveness", "entropy_bits", "weight", "accuracy"]),
        format_rows("noisy-raters: aggregation", [{"method": k, "accuracy": v} for k, v in methods.items()],
                    ["method", "accuracy"]),
        f"Pearson(entropy, head accuracy) = {corr:.4f}",
    ])
    return finish("noisy-raters", results, table, out, started)
