"""Held-out diagnostics of a reward model on preference pairs: accuracy, calibration, spurious correlations,
counterfactual sensitivity, ensemble disagreement and per-head statistics."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from alignray.rewards.models import RewardModel
from alignray.rm.preference_data import PreferenceData

ECE_BINS = 10


def pairwise_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray) -> float:
    """Share of pairs with r_chosen > r_rejected; a tie counts one half (a constant model scores 0.5)."""
    delta = np.asarray(r_chosen) - np.asarray(r_rejected)
    return float(np.mean((delta > 0) + 0.5 * (delta == 0)))


def expected_calibration_error(delta: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """ECE of the BT probability p = σ(Δr) that the chosen response wins.

    Top-label form: confidence c = max(p, 1 - p) ∈ [0.5, 1], correct = [p > 0.5]; `num_bins` equal-width bins
    on [0.5, 1]; ECE = Σ_b (n_b / N) |accuracy_b - mean confidence_b|. Ties (p = 0.5) count as half correct.
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


def bias_gaps(r_chosen: np.ndarray, r_rejected: np.ndarray, values: np.ndarray) -> dict[str, dict[str, Any]]:
    """Bias@C-style gap per attribute value v (str / bool attributes):
        gap_v = acc(pairs with v on the chosen side only) - acc(pairs with v on the rejected side only).
    Why: where v is independent of quality, an unbiased RM scores the same on both groups; a positive gap
    means the RM rewards v, a negative one that it penalises v. Numeric attributes get one entry "higher" (the
    chosen response has the larger value vs the smaller). gap is None when either group is empty."""
    values = np.asarray(values)
    correct = ((np.asarray(r_chosen) > np.asarray(r_rejected))
               + 0.5 * (np.asarray(r_chosen) == np.asarray(r_rejected)))
    if values.dtype.kind in "biu" and len(np.unique(values)) > 2 or values.dtype.kind == "f":
        groups = {"higher": (values[:, 0] > values[:, 1], values[:, 0] < values[:, 1])}
    else:
        keys = sorted(np.unique(values.astype(str)))
        text = values.astype(str)
        groups = {v: ((text[:, 0] == v) & (text[:, 1] != v), (text[:, 1] == v) & (text[:, 0] != v))
                  for v in keys}
    out = {}
    for v, (on_c, on_r) in groups.items():
        acc_c = float(correct[on_c].mean()) if on_c.any() else None
        acc_r = float(correct[on_r].mean()) if on_r.any() else None
        out[v] = {"gap": None if acc_c is None or acc_r is None else acc_c - acc_r, "acc_on_chosen": acc_c,
                  "acc_on_rejected": acc_r, "n_on_chosen": int(on_c.sum()), "n_on_rejected": int(on_r.sum())}
    return out


def over_correction(model_gaps: dict[str, dict], baseline_gaps: dict[str, dict], min_gap: float = 0.01
                    ) -> list[dict[str, Any]]:
    """Attribute values where the model's gap has the opposite sign to the baseline's (a BT RM) and a larger
    size: the invariance penalty did not remove the bias but reversed it. Gaps under `min_gap` in size are
    ignored."""
    flags = []
    for attr, per_value in model_gaps.items():
        for value, stats in per_value.items():
            base = baseline_gaps.get(attr, {}).get(value, {}).get("gap")
            gap = stats.get("gap")
            if gap is None or base is None or abs(gap) < min_gap:
                continue
            if np.sign(gap) == -np.sign(base) and abs(gap) > abs(base):
                flags.append({"attribute": attr, "value": value, "gap": gap, "baseline_gap": base})
    return flags


def evaluate_reward_model(model: RewardModel, data: PreferenceData, batch_size: int = 32) -> dict[str, Any]:
    """Score every chosen and rejected response once and compute the diagnostics in the module docstring.

    spearman: per attribute, Spearman ρ between reward and the attribute over all 2n responses (numeric or
    bool attributes; None when either side is constant). bias_gap: per attribute and value, see `bias_gaps`.
    counterfactual: per attribute with counterfactual rows, mean |r(x, y) - r(x, y_cf)| and that divided by
    the reward std (scale-free; BT rewards have no unit).
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
        "bias_gap": {},
    }
    for name, values in data.attributes.items():
        flat = np.concatenate([values[:, 0], values[:, 1]])
        if flat.dtype.kind in "biuf":
            results["spearman"][name] = _spearman(rewards, flat.astype(float))
        results["bias_gap"][name] = bias_gaps(chosen["reward"], rejected["reward"], values)
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
    for name, per_value in results.get("bias_gap", {}).items():
        for value, g in per_value.items():
            if g["gap"] is not None:
                lines.append(f"{'bias gap ' + name + '=' + value:<36} {_fmt(g['gap'])} "
                             f"(n={g['n_on_chosen']}/{g['n_on_rejected']})")
    for flag in results.get("over_correction", []):
        lines.append(f"WARNING over-correction: {flag['attribute']}={flag['value']} gap {flag['gap']:+.4f}, "
                     f"baseline {flag['baseline_gap']:+.4f} (opposite sign, larger)")
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
