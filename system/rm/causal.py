"""Resolving a causal recipe before its final fit: `cf_weight: auto`, `mmd_condition: estimate` (a 2-fold
cross-fitted BT reference orders each pair) and `mmd_lambda: auto` (the held-out sweep of auto_lambda.py).

Costs, in trainings of the model: estimate = 2 on half the data each; auto = 1 + len(grid) on (1 - holdout) of
it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from alignray.rm.auto_lambda import sweep_lambda
from alignray.rm.config import RewardTrainConfig
from alignray.rm.pairs import PreferenceData


def has_counterfactuals(data: PreferenceData, attribute: str) -> bool:
    return any(text is not None for text in data.counterfactuals.get(attribute, []))


def bt_copy(cfg: RewardTrainConfig) -> RewardTrainConfig:
    return cfg.model_copy(update={"kind": "bt", "mmd_lambda": 0.0, "cf_weight": 0.0})


def cross_fitted_swap(score_fold: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], n: int,
                      seed: int) -> np.ndarray:
    """swap[i] = the reference ranks pair i's rejected response above its chosen one. Two folds: a reference
    fitted on one half scores the other, so no pair is judged by a model that memorised its (possibly flipped)
    label. `score_fold(train_rows, score_rows)` returns (r_chosen, r_rejected) of score_rows."""
    order = np.random.default_rng(seed + 104729).permutation(n)
    halves = (np.sort(order[: n // 2]), np.sort(order[n // 2:]))
    swap = np.zeros(n, dtype=bool)
    for train_rows, score_rows in ((halves[0], halves[1]), (halves[1], halves[0])):
        rc, rr = score_fold(train_rows, score_rows)
        swap[score_rows] = rr > rc
    return swap


FitFn = Callable[[RewardTrainConfig, PreferenceData, "np.ndarray | None", "np.ndarray | None"], Any]


def resolve_causal(cfg: RewardTrainConfig, data: PreferenceData, bins: np.ndarray, fit_fn: FitFn,
                   log: Callable[[str], None] | None = None
                   ) -> tuple[RewardTrainConfig, np.ndarray | None, dict[str, Any] | None]:
    """(cfg with numeric λ and μ, swap [n] or None, the λ sweep record or None). fit_fn(cfg, data, bins, swap)
    returns a model with `.score`: the full model (`loop.fit_scalar`), or the benchmarks' cached-feature
    heads."""
    attribute = cfg.cf_attribute
    if cfg.cf_weight == "auto":
        cfg = cfg.model_copy(update={"cf_weight": 1.0 if has_counterfactuals(data, attribute) else 0.0})
    swap = None
    if cfg.mmd_condition == "estimate" and cfg.mmd_mode == "conditional":
        def score_fold(train_rows: np.ndarray, score_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ref = fit_fn(bt_copy(cfg), data.subset(train_rows), None, None)
            held = data.subset(score_rows)
            return ref.score(held.prompts, held.chosen)["reward"], ref.score(held.prompts,
                                                                             held.rejected)["reward"]

        swap = cross_fitted_swap(score_fold, len(data), cfg.seed)
        if log is not None:
            log(f"mmd_condition estimate: the reference reverses {swap.mean():.1%} of the labels")
    if cfg.mmd_lambda != "auto":
        return cfg, swap, None

    def train_at(lam: float, rows: np.ndarray):
        run_cfg = bt_copy(cfg) if lam == 0 else cfg.model_copy(update={"mmd_lambda": lam})
        return fit_fn(run_cfg, data.subset(rows), bins[rows], None if swap is None else swap[rows])

    lam, record = sweep_lambda(train_at, data, attribute, bins, cfg.mmd_auto_grid, cfg.mmd_auto_holdout,
                               cfg.mmd_auto_tolerance, cfg.seed, log)
    if swap is not None:
        record["estimate_reversed_share"] = float(swap.mean())
    return cfg.model_copy(update={"mmd_lambda": lam}), swap, record
