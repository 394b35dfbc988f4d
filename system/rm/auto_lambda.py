"""`mmd_lambda: auto` — choose the causal RM's λ from a sweep on a held-out part of the training data.

Rule (documented in docs/reward-models.md; the whole sweep is saved with the model and in the run directory):
1. Split the training pairs (seeded) into fit (1 - holdout) and held-out (holdout, default 20 %).
2. Train BT (λ = 0) and the causal RM at every λ of the grid on the fit part; score the held-out part.
3. Feasible: held-out *balanced* accuracy >= BT's - tolerance (default 0.02), and not collapsed: the held-out
   reward spread (std) at least COLLAPSE_RATIO (1e-3) of BT's — a penalty strong enough to flatten the reward
   can keep a noisy-label accuracy by chance but ranks nothing. Balanced accuracy (`balanced_accuracy`) is the
   mean accuracy over the pairs whose chosen response has the higher bin of Z, the lower one and the same one:
   labels that follow Z (a length-biased annotator) reward a Z-biased model on the large group where they
   agree with Z and punish it only on the small one; weighing the groups equally does not trust that bias.
4. Bias score, lower is better:
   - held-out rows carry counterfactuals of the attribute → the counterfactual sensitivity
     mean|r(x, y) - r(x, y_cf)| / std(r). It measures invariance directly, so over-correction (a reward
     that now *penalises* Z) raises it, and the feasible λ with the lowest score wins (ties: the smaller λ).
   - no counterfactuals → the held-out within-label MMD² of the standardised reward between bins of Z. Every λ
     drives this statistic down, including into over-correction (with label noise the within-label groups are
     themselves confounded), so the rule stops early: the smallest feasible λ that halves BT's statistic,
     else the feasible λ with the lowest one.
5. No feasible λ → the smallest λ of the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from alignray.rm.evaluate import pairwise_accuracy
from alignray.rm.mmd import STRATUM_STRIDE, conditional_causal_penalty
from alignray.rm.preference_data import PreferenceData

AUTO_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
COLLAPSE_RATIO = 1e-3
"""A fit whose reward spread is below this share of BT's has collapsed (arXiv 2501.09620's penalty can flatten
the reward entirely at large λ): never chosen, and a final fit that collapses is refitted at a smaller λ."""


def collapsed(spread: float, baseline_spread: float) -> bool:
    return spread < COLLAPSE_RATIO * baseline_spread


def heldout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) row indices; at least 2 rows on each side."""
    order = np.random.default_rng(seed + 7919).permutation(n)
    held = min(max(int(round(n * fraction)), 2), n - 2)
    return np.sort(order[held:]), np.sort(order[:held])


MIN_GROUP_PAIRS = 10
"""A group of `balanced_accuracy` counts only with at least this many held-out pairs."""


def balanced_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray, bins: np.ndarray) -> float:
    """Mean pairwise accuracy over the groups of pairs whose chosen response's bin of Z is higher than, lower
    than or the same as the rejected one's (bins [n, 2]; pairs across strata or with an unbinned side count as
    the same; categorical bins compare by id, which still splits "Z on the chosen side" from "on the
    rejected side" for a binary Z), groups of fewer than MIN_GROUP_PAIRS pairs left out; the plain accuracy
    when fewer than two groups are left."""
    bins = np.asarray(bins)
    side = np.sign(bins[:, 0] - bins[:, 1])
    side[(bins[:, 0] // STRATUM_STRIDE != bins[:, 1] // STRATUM_STRIDE) | (bins.min(axis=1) < 0)] = 0
    groups = [side == s for s in (-1, 0, 1) if (side == s).sum() >= MIN_GROUP_PAIRS]
    if len(groups) < 2:
        return pairwise_accuracy(r_chosen, r_rejected)
    return float(np.mean([pairwise_accuracy(r_chosen[g], r_rejected[g]) for g in groups]))


def bias_scores(model, held: PreferenceData, attribute: str, bins: np.ndarray, batch_size: int = 64
                ) -> dict[str, Any]:
    """Held-out accuracy (plain and balanced), counterfactual sensitivity of `attribute` (None without
    counterfactual rows) and the within-label MMD² of the standardised reward between bins (bins [n, 2]:
    chosen, rejected)."""
    rc = model.score(held.prompts, held.chosen, batch_size)["reward"]
    rr = model.score(held.prompts, held.rejected, batch_size)["reward"]
    std = max(float(np.concatenate([rc, rr]).std()), 1e-12)
    row: dict[str, Any] = {"accuracy": pairwise_accuracy(rc, rr),
                           "balanced_accuracy": balanced_accuracy(rc, rr, bins), "counterfactual": None,
                           "spread": float(np.concatenate([rc, rr]).std())}
    cf = held.counterfactuals.get(attribute)
    rows = [i for i, text in enumerate(cf or []) if text is not None]
    if rows:
        r_cf = model.score([held.prompts[i] for i in rows], [cf[i] for i in rows], batch_size)["reward"]
        row["counterfactual"] = float(np.abs(rc[rows] - r_cf).mean() / std)
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    row["mmd"] = float(conditional_causal_penalty(t(rc / std), torch.as_tensor(bins[:, 0]), t(rr / std),
                                                  torch.as_tensor(bins[:, 1]), bandwidth=1.0))
    return row


def choose_lambda(baseline: dict[str, Any], rows: list[dict[str, Any]], tolerance: float) -> tuple[float,
                                                                                                   str]:
    """Apply steps 3-5 of the module rule to sweep rows ({"lambda", "balanced_accuracy", "counterfactual",
    "mmd", "spread"}); returns (λ, the metric used)."""
    rows = sorted(rows, key=lambda r: r["lambda"])
    feasible = [r for r in rows if r["balanced_accuracy"] >= baseline["balanced_accuracy"] - tolerance
                and not collapsed(r.get("spread", np.inf), baseline.get("spread", 0.0))]
    use_cf = all(r["counterfactual"] is not None for r in rows) and baseline["counterfactual"] is not None
    metric = "counterfactual" if use_cf else "mmd"
    if not feasible:
        return float(rows[0]["lambda"]), metric
    if not use_cf:
        halved = [r for r in feasible if r["mmd"] <= 0.5 * baseline["mmd"]]
        if halved:
            return float(halved[0]["lambda"]), metric
    best = min(feasible, key=lambda r: (r[metric], r["lambda"]))
    return float(best["lambda"]), metric


def sweep_lambda(train_at: Callable[[float, np.ndarray], Any], data: PreferenceData, attribute: str,
                 bins: np.ndarray, grid: tuple[float, ...] | list[float] = AUTO_GRID, holdout: float = 0.2,
                 tolerance: float = 0.02, seed: int = 0, log: Callable[[str], None] | None = None
                 ) -> tuple[float, dict[str, Any]]:
    """Run the rule: `train_at(λ, fit_rows)` returns a model with `.score` trained on data rows `fit_rows`
    (λ = 0 means plain BT). Returns (λ, record) where record holds the rule, the grid and every row."""
    fit_rows, held_rows = heldout_split(len(data), holdout, seed)
    held, held_bins = data.subset(held_rows), bins[held_rows]
    baseline = {"lambda": 0.0, **bias_scores(train_at(0.0, fit_rows), held, attribute, held_bins)}
    rows = []
    for lam in grid:
        rows.append({"lambda": float(lam), **bias_scores(train_at(float(lam), fit_rows), held, attribute,
                                                         held_bins)})
        if log is not None:
            log(f"mmd_lambda auto: λ={lam} {rows[-1]}")
    chosen, metric = choose_lambda(baseline, rows, tolerance)
    record = {"chosen_lambda": chosen, "metric": metric, "tolerance": tolerance, "holdout": holdout,
              "n_fit": int(len(fit_rows)), "n_heldout": int(len(held_rows)), "baseline_bt": baseline,
              "sweep": rows}
    return chosen, record
