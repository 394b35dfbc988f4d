"""Held-out diagnostics of a reward model on preference pairs: accuracy, calibration, spurious correlations,
counterfactual sensitivity, ensemble disagreement and per-head statistics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from .models import RewardModel
from .preference_data import PreferenceData

ECE_BINS = 10


def pairwise_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray) -> float:
    """Share of pairs with r_chosen > r_rejected; a tie counts one half (a constant model scores 0.5)."""
    delta = np.asarray(r_chosen) - np.asarray(r_rejected)
    return float(np.mean((delta > 0) + 0.5 * (delta == 0)))


def expected_calibration_error(delta: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """ECE of the BT probability p = σ(Δr) that the chosen response wins.

    Top-label form: confidence c = max(p, 1 - p) ∈ [0.5, 1], correct = [p > 0.5]; `num_bins` equal-width bins on
    [0.5, 1]; ECE = Σ_b (n_b / N) |accuracy_b - mean confidence_b|. Ties (p = 0.5) count as half correct.
    """
    p = 1.0 / (1.0 + np.exp(-np.asarray(delta, dtype=float)))
    confidence = np.maximum(p, 1.0 - p)
    correct = (p > 0.5) + 0.5 * (p == 0.5)
    bins = np.minimum(((confidence - 0.5) * 2 * num_bins).astype(int), num_bins - 1)
    ece = 0.0
    for b in range(num_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if np.std(x) == 0 or np.std(y) == 0:
        return None
    rho = spearmanr(x, y).statistic
    return None if math.isnan(rho) else float(rho)


def evaluate_reward_model(model: RewardModel, data: PreferenceData, batch_size: int = 32) -> dict[str, Any]:
    """Score every chosen and rejected response once and compute the diagnostics in the module docstring.

    spearman: per attribute, Spearman ρ between reward and the attribute over all 2n responses (numeric or bool
    attributes; None when either side is constant). counterfactual: per attribute with counterfactual rows,
    mean |r(x, y) - r(x, y_cf)| and that divided by the reward std (scale-free; BT rewards have no unit).
    """
    chosen = model.score(data.prompts, data.chosen, batch_size)
    rejected = model.score(data.prompts, data.rejected, batch_size)
    delta = chosen["reward"] - rejected["reward"]
    rewards = np.concatenate([chosen["reward"], rejected["reward"]])
    results: dict[str, Any] = {
        "n_pairs": len(data),
        "accuracy": pairwise_accuracy(chosen["reward"], rejected["reward"]),
        "ece": expected_calibration_error(delta),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "spearman": {},
        "counterfactual": {},
    }
    for name, values in data.attributes.items():
        flat = np.concatenate([values[:, 0], values[:, 1]])
        if flat.dtype.kind in "biuf":
            results["spearman"][name] = _spearman(rewards, flat.astype(float))
    for name, cf_responses in data.counterfactuals.items():
        rows = [i for i, text in enumerate(cf_responses) if text is not None]
        if rows:
            cf = model.score([data.prompts[i] for i in rows], [cf_responses[i] for i in rows], batch_size)
            gap = np.abs(chosen["reward"][rows] - cf["reward"])
            results["counterfactual"][name] = {"n": len(rows), "mean_abs_delta": float(gap.mean()),
                                               "relative": float(gap.mean() / max(rewards.std(), 1e-12))}
    members = sorted((k for k in chosen if k.startswith("member_")), key=lambda k: int(k.split("_")[1]))
    if members:
        results["ensemble"] = {
            "disagreement": float(np.concatenate([chosen["std"], rejected["std"]]).mean()),
            "member_accuracy": {m: pairwise_accuracy(chosen[m], rejected[m]) for m in members},
        }
    heads = [k[len("head_"):] for k in chosen if k.startswith("head_")]
    if heads:
        encore = getattr(model, "encore", None)
        entropy = dict(zip(encore.head_names, encore.entropies, strict=True)) if encore is not None else {}
        results["heads"] = {
            h: {"accuracy": pairwise_accuracy(chosen[f"head_{h}"], rejected[f"head_{h}"]),
                "weight": float(chosen[f"weight_{h}"][0]), "entropy": entropy.get(h)}
            for h in heads
        }
    return results


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """Human-readable rendering of `evaluate_reward_model` output."""
    lines = [f"{'metric':<36} value", "-" * 48]
    for key in ("n_pairs", "accuracy", "ece", "reward_mean", "reward_std"):
        lines.append(f"{key:<36} {_fmt(results[key])}")
    for name, rho in results.get("spearman", {}).items():
        lines.append(f"{'spearman(reward, ' + name + ')':<36} {_fmt(rho)}")
    for name, cf in results.get("counterfactual", {}).items():
        lines.append(f"{'counterfactual |Δr| ' + name:<36} {_fmt(cf['mean_abs_delta'])} "
                     f"(relative {_fmt(cf['relative'])}, n={cf['n']})")
    if "ensemble" in results:
        lines.append(f"{'ensemble disagreement (mean std)':<36} {_fmt(results['ensemble']['disagreement'])}")
        for member, acc in results["ensemble"]["member_accuracy"].items():
            lines.append(f"{'accuracy ' + member:<36} {_fmt(acc)}")
    if "heads" in results:
        lines.append(f"{'head':<20} {'accuracy':>9} {'weight':>8} {'entropy':>8}")
        for head, stats in results["heads"].items():
            lines.append(f"{head:<20} {_fmt(stats['accuracy']):>9} {_fmt(stats['weight']):>8} "
                         f"{_fmt(stats['entropy']):>8}")
    return "\n".join(lines)
