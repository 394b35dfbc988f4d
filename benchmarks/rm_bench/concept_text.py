"""concept-text / sycophancy-text: a spurious attribute on real sentences, scored with the pretrained MiniLM
encoder.

Data (text_grammar.py, seeded): pairs of restaurant-advice answers with hidden quality q ∈ 0..4 (distinct
within a pair; the true winner has the higher q). Training: the attribute (concept: price / ambience remark;
sycophancy: a flattering opener) is on 80 % of the truly better and 20 % of the truly worse responses, then a
share `noise` (0 / 10 / 25 %) of the labels is flipped — so with noise the concept sits on ~65 % of chosen
responses, and inside the observed-chosen group it still marks the truly better ones. Test: the attribute is
on each response with probability 1/2, independent of quality; labels are clean. Every chosen response has an
exact counterfactual (the attribute sentence removed, or one inserted), in training rows too (`counterfactual:
{concept: text}`).

Models: a head (384 → 64 → 1) on frozen mean-pooled MiniLM features, trained with the same objective as the
full trainer (features.py). Reported per recipe, mean over training seeds (label flips and head init differ
per seed): accuracy; bias gap = acc(attribute on the chosen side only) - acc(on the rejected side only), for
"present" and per value; counterfactual |Δr| relative to the reward std (and absolute); the λ `auto` chose.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import alignray.rm.text_grammar as g
from alignray.rm import RewardTrainConfig
from alignray.rm.builtin import ATTR, make_pairs, to_data
from alignray.rm.causal import resolve_causal
from alignray.rm.evaluate import evaluate_reward_model
from alignray.rm.mmd import fit_bins
from alignray.rm.preference_data import PreferenceData
from rm_bench.common import finish, format_rows, quiet_transformers
from rm_bench.features import FeatureBank, fit_head, minilm_path

# name → RewardTrainConfig fields (kind causal unless "bt"); "default" is what a bare `kind: causal` config
# does; _without_counterfactuals: the training rows lose their counterfactuals (the λ rule falls back to the
# MMD statistic)
RECIPES: dict[str, dict[str, Any]] = {
    "bt": {"kind": "bt"},
    "causal cond λ=1 (paper)": {"mmd_lambda": 1.0, "cf_weight": 0.0},
    "causal uncond λ=1 (paper)": {"mmd_lambda": 1.0, "mmd_mode": "unconditional", "cf_weight": 0.0},
    "causal cond auto": {"cf_weight": 0.0},
    "causal cond auto, no cf in data": {"cf_weight": 0.0, "_without_counterfactuals": True},
    "causal cond-estimate λ=1": {"mmd_lambda": 1.0, "mmd_condition": "estimate", "cf_weight": 0.0},
    "causal cond-estimate auto": {"mmd_condition": "estimate", "cf_weight": 0.0},
    "counterfactual only": {"mmd_lambda": 0.0, "cf_weight": 1.0},
    "causal cond-estimate auto + cf": {"mmd_condition": "estimate", "cf_weight": 1.0},
    "default (cond auto + cf)": {},
}


def all_texts(pairs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        for resp, cf_value in zip((pair["better"], pair["worse"]), pair["cf"], strict=True):
            out += [(pair["prompt"], resp.render()), (pair["prompt"], resp.render(cf_value))]
    return out


def train_recipe(name: str, base: dict[str, Any], train: PreferenceData, bank: FeatureBank, seed: int
                 ) -> tuple[Any, RewardTrainConfig, dict | None]:
    fields = {**base, "seed": seed, **RECIPES[name]}
    if fields.pop("_without_counterfactuals", False):
        train = PreferenceData(train.prompts, train.chosen, train.rejected, train.attributes,
                               source=train.source)
    cfg = RewardTrainConfig(**{"kind": "causal", **fields})
    if cfg.kind != "causal":
        return fit_head(cfg, train, bank), cfg, None
    bins = fit_bins(train.attributes[ATTR].reshape(-1), "categorical").assign(
        train.attributes[ATTR].reshape(-1)).reshape(len(train), 2)

    def fit_fn(c, d, b, s):
        return fit_head(c, d, bank, b, s)

    cfg, swap, sweep = resolve_causal(cfg, train, bins, fit_fn)
    return fit_head(cfg, train, bank, bins, swap), cfg, sweep


def run_task(concept: str, n_train: int, n_test: int, noises: list[float], seeds: list[int],
             recipes: list[str] | None = None, grid: list[float] | None = None) -> dict[str, Any]:
    """Rows per (noise, recipe), metrics averaged over seeds, plus the per-seed rows and λ sweeps."""
    quiet_transformers()
    train_pairs, test_pairs = make_pairs(n_train, 0, concept, True), make_pairs(n_test, 1, concept, False)
    bank = FeatureBank(minilm_path())
    bank.add(all_texts(train_pairs) + all_texts(test_pairs))
    test = to_data(test_pairs, 0.0, 0, f"{concept}-text test")
    base = {"base_model": bank.model_path, "mmd_attribute": ATTR, "mmd_bins": "categorical", "epochs": 15,
            "batch_size": 128, "lr": 3e-3, "weight_decay": 0.01}
    if grid is not None:
        base["mmd_auto_grid"] = grid
    per_seed, rows = [], []
    for noise in noises:
        for name in recipes or list(RECIPES):
            runs = []
            for seed in seeds:
                train = to_data(train_pairs, noise, seed, f"{concept}-text train")
                model, cfg, sweep = train_recipe(name, base, train, bank, seed)
                m = evaluate_reward_model(model, test)
                gaps = m["bias_gap"]
                runs.append({"noise": noise, "recipe": name, "seed": seed, "accuracy": m["accuracy"],
                             "gap_present": gaps["present"]["True"]["gap"],
                             **{f"gap_{v}": gaps[ATTR][v]["gap"] for v in g.CONCEPTS[concept]},
                             "cf_rel": m["counterfactual"][ATTR]["relative"],
                             "cf_abs": m["counterfactual"][ATTR]["mean_abs_delta"],
                             "lambda": float(cfg.mmd_lambda) if cfg.kind == "causal" else 0.0,
                             "sweep": sweep})
            per_seed += runs
            keys = [k for k in runs[0] if k not in ("noise", "recipe", "seed", "sweep")]
            rows.append({"noise": noise, "recipe": name,
                         **{k: float(np.mean([r[k] for r in runs])) for k in keys},
                         "lambdas": "/".join(f"{r['lambda']:g}" for r in runs)})
    return {"rows": rows, "per_seed": per_seed, "n_train": n_train, "n_test": n_test, "seeds": seeds}


def run(out: str | None = None, quick: bool = False, concept: str = "concept") -> dict[str, Any]:
    started = time.time()
    if quick:
        results = run_task(concept, 400, 300, [0.25], [0])
    else:
        results = run_task(concept, 1500, 1500, [0.0, 0.1, 0.25], [0, 1, 2])
    columns = ["noise", "recipe", "accuracy", "gap_present",
               *[f"gap_{v}" for v in g.CONCEPTS[concept]], "cf_rel", "cf_abs", "lambdas"]
    table = format_rows(f"{concept}-text (MiniLM features; train: attribute on 80% better / 20% worse, "
                        "labels flipped; test: attribute ⟂ quality)", results["rows"], columns)
    return finish(f"{concept}-text", results, table, out, started)


def run_sycophancy(out: str | None = None, quick: bool = False) -> dict[str, Any]:
    return run(out, quick, concept="sycophancy")
