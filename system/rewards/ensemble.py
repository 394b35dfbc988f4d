"""Aggregating an ensemble of reward models, and WARM weight averaging.

Member rewards come as an array [k, n] (members on axis 0) — numpy or torch, returned in the same type.
References: Coste et al. 2023 (arXiv 2310.02743: mean, WCO, UWO), Eisenstein/Zhang et al. 2024 (arXiv
2401.16635: LCB), Ramé et al. 2024 (WARM, arXiv 2401.12187).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

Aggregation = Literal["mean", "lcb", "worst_case", "uncertainty_weighted"]
AGGREGATIONS: tuple[str, ...] = ("mean", "lcb", "worst_case", "uncertainty_weighted")
# Default coefficient per rule: β of LCB (2401.16635 sweeps it; 1 std is the usual choice), λ of UWO (0.5 is
# Coste et al.'s best-of-n value).
DEFAULT_COEF: dict[str, float] = {"mean": 0.0, "lcb": 1.0, "worst_case": 0.0, "uncertainty_weighted": 0.5}


def _check(rewards):
    if rewards.ndim != 2 or rewards.shape[0] < 1:
        raise ValueError(f"member rewards must have shape [k, n] with k >= 1, got {tuple(rewards.shape)}")


def member_std(rewards, ddof: int = 0):
    """Std over members (axis 0). ddof=0 (population std) by default, as in Coste et al.'s best-of-n code;
    with ddof=1 a single member would give NaN, so ddof is capped at k-1."""
    _check(rewards)
    ddof = min(ddof, rewards.shape[0] - 1)
    if isinstance(rewards, torch.Tensor):
        return rewards.std(dim=0, correction=ddof)
    return np.std(rewards, axis=0, ddof=ddof)


def mean_reward(rewards):
    """r̄ = (1/k) Σ_i r_i."""
    _check(rewards)
    return rewards.mean(0)


def lcb_reward(rewards, beta: float = 1.0, ddof: int = 0):
    """Lower confidence bound: r̄ - β · std_i(r_i). Penalises samples the members disagree on."""
    return mean_reward(rewards) - beta * member_std(rewards, ddof)


def worst_case_reward(rewards):
    """Worst-case optimisation (WCO): min_i r_i."""
    _check(rewards)
    return rewards.min(0).values if isinstance(rewards, torch.Tensor) else rewards.min(0)


def uncertainty_weighted_reward(rewards, lam: float = 0.5, ddof: int = 0):
    """Uncertainty-weighted optimisation (UWO): r̄ - λ · var_i(r_i) (variance, not std, as in Coste et al.)."""
    return mean_reward(rewards) - lam * member_std(rewards, ddof) ** 2


def aggregate(rewards, rule: Aggregation = "mean", coef: float | None = None, ddof: int = 0):
    """Apply one aggregation rule; coef is β for "lcb" and λ for "uncertainty_weighted" (defaults in
    DEFAULT_COEF)."""
    if rule not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {rule!r}: use one of {', '.join(AGGREGATIONS)}")
    coef = DEFAULT_COEF[rule] if coef is None else coef
    if rule == "mean":
        return mean_reward(rewards)
    if rule == "lcb":
        return lcb_reward(rewards, coef, ddof)
    if rule == "worst_case":
        return worst_case_reward(rewards)
    return uncertainty_weighted_reward(rewards, coef, ddof)


def warm_average(
    state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """WARM: θ = Σ_i w_i θ_i (uniform w by default) over members fine-tuned from one shared initialisation.

    Averaging only makes sense for members in one linearly connected basin, i.e. same architecture and same
    init; this checks identical keys, shapes and dtypes and raises naming the first mismatch. Integer buffers
    (e.g. position ids) are taken from the first member unchanged.
    """
    if not state_dicts:
        raise ValueError("warm_average needs at least one state dict")
    weights = [1.0 / len(state_dicts)] * len(state_dicts) if weights is None else list(weights)
    if len(weights) != len(state_dicts) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"need one weight per member summing to 1, got {weights}")
    reference = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if set(sd) != set(reference):
            diff = sorted(set(sd) ^ set(reference))
            raise ValueError(f"member {i} does not share parameters with member 0 (e.g. {diff[:3]})")
        for key, tensor in sd.items():
            if tensor.shape != reference[key].shape or tensor.dtype != reference[key].dtype:
                raise ValueError(
                    f"member {i} parameter {key!r} is {tuple(tensor.shape)} {tensor.dtype}, member 0 has "
                    f"{tuple(reference[key].shape)} {reference[key].dtype}"
                )
    averaged = {}
    for key, tensor in reference.items():
        if not tensor.is_floating_point():
            averaged[key] = tensor.clone()
            continue
        total = sum(w * sd[key].detach().double() for w, sd in zip(weights, state_dicts, strict=True))
        averaged[key] = total.to(tensor.dtype)
    return averaged
