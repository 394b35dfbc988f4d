"""The pairwise objective of the scalar reward models (BT, causal), on reward tensors only — shared by the
full-model trainer (`train.reward_loss`) and the cached-feature benchmark heads, so both optimise exactly the
same formula.

    L = BT(r_c, r_r) + λ · MMD-penalty(r; bins of Z, groups) + μ · mean_i (r(x_i, y_c,i) - r(x_i, y_cf,i))²

Groups of the conditional penalty (`condition`):
- "label": the paper's conditional CRM, r ⟂ Z | observed label (within chosen + within rejected).
- "estimate": r ⟂ Z | estimated quality order. Pairs whose estimated winner (a reference model's Δr < 0) is
  the rejected response swap sides before grouping. Why: with label noise and Z correlated with *true*
  quality, the observed-chosen group mixes truly better and truly worse responses whose Z rates differ, so r ⟂
  Z | noisy label asks the reward to *penalise* Z (over-correction); a denoised order removes most of that
  pull.
The counterfactual-consistency term (μ) uses rows that carry `counterfactual: {attr: text}` (the chosen
response with only the attribute changed): it asks invariance directly, needs no label, so label noise cannot
bias it.
"""

from __future__ import annotations

import torch

from alignray.rewards.losses import bradley_terry_loss
from alignray.rm.mmd import BandwidthRule, causal_penalty, conditional_causal_penalty


def counterfactual_consistency(r: torch.Tensor, r_cf: torch.Tensor) -> torch.Tensor:
    """mean_i (r_i - r_cf,i)²; 0 (attached) when there are no counterfactual rows."""
    if r.numel() == 0:
        return r_cf.sum() * 0.0
    return (r - r_cf).pow(2).mean()


def grouped_values(values: torch.Tensor, bins: torch.Tensor, swap: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split [2B] rows (chosen first) into the (better, worse) groups; `swap` [B] bool moves a pair's rejected
    response into the better group."""
    half = values.shape[0] // 2
    vc, vr, bc, br = values[:half], values[half:], bins[:half], bins[half:]
    if swap is None:
        return vc, bc, vr, br
    s = swap.to(values.device).bool()
    s_v = s.view(-1, *([1] * (values.dim() - 1)))
    return (torch.where(s_v, vr, vc), torch.where(s, br, bc), torch.where(s_v, vc, vr), torch.where(s, bc,
                                                                                                    br))


def invariance_penalty(values: torch.Tensor, bins: torch.Tensor, mode: str, swap: torch.Tensor | None = None,
                       bandwidth: BandwidthRule = 1.0, min_bin_size: int = 2, reduction: str = "sum"
                       ) -> torch.Tensor:
    """Σ MMD² between bins of Z: over all 2B rows (unconditional) or within each group (conditional)."""
    kw = {"bandwidth": bandwidth, "min_bin_size": min_bin_size, "reduction": reduction}
    if mode == "unconditional":
        return causal_penalty(values, bins, **kw)
    better, b_bins, worse, w_bins = grouped_values(values, bins, swap)
    return conditional_causal_penalty(better, b_bins, worse, w_bins, **kw)


def preference_objective(r: torch.Tensor, *, margin: float | None = None, mmd_lambda: float = 0.0,
                         mmd_values: torch.Tensor | None = None, bins: torch.Tensor | None = None,
                         mmd_mode: str = "conditional", swap: torch.Tensor | None = None,
                         bandwidth: BandwidthRule = 1.0, min_bin_size: int = 2, reduction: str = "sum",
                         cf_weight: float = 0.0, cf_rows: torch.Tensor | None = None,
                         r_cf: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss in the module docstring for rewards r [2B] (chosen rows first). mmd_values defaults to r (the
    representation may be passed instead); cf_rows [K] index the chosen rows whose counterfactual rewards are
    r_cf."""
    half = r.shape[0] // 2
    loss = bradley_terry_loss(r[:half], r[half:], margin)
    stats = {"bt_loss": float(loss.detach())}
    if mmd_lambda > 0 and bins is not None:
        values = r if mmd_values is None else mmd_values
        penalty = invariance_penalty(values, bins.to(values.device), mmd_mode, swap, bandwidth, min_bin_size,
                                     reduction)
        loss = loss + mmd_lambda * penalty
        stats["mmd"] = float(penalty.detach())
    if cf_weight > 0 and r_cf is not None and cf_rows is not None:
        consistency = counterfactual_consistency(r[cf_rows.to(r.device)], r_cf)
        loss = loss + cf_weight * consistency
        stats["cf"] = float(consistency.detach())
    stats["loss"] = float(loss.detach())
    stats["accuracy"] = float((r[:half] > r[half:]).float().mean())
    return loss, stats
