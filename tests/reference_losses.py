"""Reference implementations of the loss formulas on one whole batch (aggregate over [B, T], then the mean):
the numbers the learner's Objective, which splits a batch over ranks and micro-batches, must reproduce."""

from __future__ import annotations

import torch
from torch import Tensor

from alignray.algorithms.kl import KLKind, kl_estimate
from alignray.algorithms.losses import AGG_MODES, AggMode, policy_loss_per_token, value_loss_per_token


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)



def aggregate(
    per_token: Tensor, mask: Tensor, mode: AggMode = "token_mean", norm_len: int | None = None
) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar.

    token_mean:              sum(x*m) / sum(m)           every token weighs the same (DAPO).
    seq_mean_token_mean:     mean_i [sum_t x*m / sum_t m] every sequence weighs the same (original GRPO);
                             rows without valid tokens are left out of the mean.
    seq_mean_token_sum_norm: sum(x*m) / (B * norm_len)  constant normaliser, no length bias (Dr. GRPO);
                             norm_len defaults to T.
    An all-zero mask gives 0 (not NaN), still connected to the graph.
    """
    m = mask.to(per_token.dtype)
    x = torch.where(m != 0, per_token * m, torch.zeros_like(per_token))
    if mode == "token_mean":
        return x.sum() / m.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        tokens = m.sum(dim=1)
        seq = x.sum(dim=1) / tokens.clamp(min=1)
        has_tokens = (tokens > 0).to(per_token.dtype)
        return (seq * has_tokens).sum() / has_tokens.sum().clamp(min=1)
    if mode == "seq_mean_token_sum_norm":
        return x.sum() / (per_token.shape[0] * (norm_len if norm_len is not None else per_token.shape[1]))
    raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    is_weights: Tensor | None = None,
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``policy_loss_per_token`` aggregated over one batch, returns (scalar loss, stats).

    stats: clip_frac (valid tokens where the clipped term is the active one), dual_clip_frac,
    approx_kl = mean over valid tokens of (ratio - 1) - log ratio (k3 estimate of KL(old || new), as in
    CleanRL), ratio_mean (mean ratio over valid tokens).
    """
    terms = policy_loss_per_token(logp, old_logp, advantages, mask, clip_eps=clip_eps,
                                  clip_eps_high=clip_eps_high, dual_clip=dual_clip, is_weights=is_weights)
    total = aggregate(terms.loss, mask, agg, norm_len)
    with torch.no_grad():
        stats = {
            "clip_frac": _masked_mean(terms.clipped.float(), mask).item(),
            "dual_clip_frac": _masked_mean(terms.dual_clipped.float(), mask).item(),
            "approx_kl": _masked_mean((terms.ratio - 1.0) - terms.log_ratio, mask).item(),
            "ratio_mean": _masked_mean(terms.ratio, mask).item(),
        }
    return total, stats


def kl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kind: KLKind = "k3",
    agg: str = "token_mean",
    norm_len: int | None = None,
) -> Tensor:
    """KL(pi || pi_ref) as a loss term (GRPO-style "KL in loss"): aggregate(kl_estimate(logp, ref_logp))."""
    per_token = kl_estimate(logp, ref_logp.detach(), kind)
    return aggregate(per_token, mask, agg, norm_len)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float | None = 0.2,
    agg: str = "token_mean",
) -> Tensor:
    """``value_loss_per_token`` aggregated over one batch."""
    return aggregate(value_loss_per_token(values, old_values, returns, clip_eps), mask, agg)


def logprob_mismatch(learner_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> float:
    """Mean |learner_logp - rollout_logp| over valid tokens (0.0 if none): a health metric for the
    rollout-engine / learner numerical mismatch."""
    with torch.no_grad():
        diff = torch.where(mask.bool(), (learner_logp - rollout_logp).abs(), torch.zeros_like(learner_logp))
        return _masked_mean(diff, mask).item()
