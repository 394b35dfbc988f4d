"""Policy-gradient losses and log-prob utilities: PPO clipped surrogate (+dual clip, TIS weights),
KL loss, clipped value loss, loss aggregation modes, entropy / log-probs from logits.

Conventions as in ``advantages``: [B, T] token tensors, ``mask`` [B, T] with 1 on response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from alignray.algorithms.kl import LOG_RATIO_CLAMP, KLKind, kl_estimate

AggMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGG_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def _masked_log_ratio(logp: Tensor, other_logp: Tensor, mask: Tensor) -> Tensor:
    """logp - other_logp, 0 on padding (so exp() of padding garbage can't make inf/NaN), clamped."""
    diff = torch.where(mask.bool(), logp - other_logp, torch.zeros_like(logp))
    return diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


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


@dataclass
class PolicyTerms:
    """Per-token pieces of the clipped surrogate, [B, T] each (the loss is not yet aggregated)."""

    loss: Tensor
    ratio: Tensor
    log_ratio: Tensor
    clipped: Tensor  # bool: the clipped term is the active one
    dual_clipped: Tensor  # bool: the dual clip bounds the loss


def policy_loss_per_token(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    is_weights: Tensor | None = None,
) -> PolicyTerms:
    """PPO clipped surrogate (Schulman et al. 2017) per token, before any aggregation.

    ratio = exp(logp - old_logp)  (log-ratio 0 on padding, clamped to [-20, 20])
    loss_t = max(-ratio*A, -clip(ratio, 1-clip_eps, 1+clip_eps_high)*A)   (= -min(...) of the objective)
    clip_eps_high defaults to clip_eps (set it higher for DAPO's "clip-higher").
    Dual clip (Ye et al. 2020), for A < 0 only: loss_t = min(loss_t, -dual_clip*A), bounding the loss
    when a negative-advantage token's ratio explodes; dual_clip must be > 1.
    is_weights (e.g. ``truncated_is_weights``) multiply loss_t, detached.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = _masked_log_ratio(logp, old_logp, mask)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    loss_unclipped = -ratio * advantages
    loss_clipped = -ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * advantages
    loss = torch.maximum(loss_unclipped, loss_clipped)
    dual_active = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss_dual = -dual_clip * advantages
        dual_active = (advantages < 0) & (loss > loss_dual)
        loss = torch.where(dual_active, loss_dual, loss)
    if is_weights is not None:
        loss = loss * is_weights.detach()
    return PolicyTerms(loss, ratio, log_ratio, (loss_clipped > loss_unclipped).detach(), dual_active)


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
    terms = policy_loss_per_token(logp, old_logp, advantages, mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high,
                                  dual_clip=dual_clip, is_weights=is_weights)
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


def value_loss_per_token(values: Tensor, old_values: Tensor, returns: Tensor, clip_eps: float | None = 0.2) -> Tensor:
    """Clipped value loss per token (PPO2 / OpenAI baselines): 0.5 * max((V - R)^2, (V_clip - R)^2),
    V_clip = V_old + clip(V - V_old, -eps, eps). ``clip_eps=None`` gives the plain 0.5 * (V - R)^2.
    """
    returns = returns.detach()
    loss = (values - returns).square()
    if clip_eps is not None:
        old_values = old_values.detach()
        v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        loss = torch.maximum(loss, (v_clipped - returns).square())
    return 0.5 * loss


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


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-position entropy [B, T, V] -> [B, T]: H = logsumexp(z) - sum_v softmax(z)_v * z_v.

    Equal to -sum p log p but without log(0); stable for large logits (logsumexp / softmax subtract
    the max). Logits must be finite (no -inf vocab masking). Computed in the logits' dtype:
    upcast bf16 logits first if you need fp32 precision.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at ``tokens``: [B, T, V], [B, T] -> [B, T].

    Computed as z[token] - logsumexp(z), never materialising the full log-softmax. fp32/fp64
    logits are done in one shot; half-precision logits are upcast one row at a time (fp32 accuracy
    at the memory cost of a single [T, V] fp32 block), as TRL's ``selective_log_softmax``.
    The temperature must match the one used by the rollout engine for log-probs to agree.
    """
    if temperature != 1.0:
        logits = logits / temperature
    index = tokens.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row = row_logits.float()
        rows.append(row.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def truncated_is_weights(learner_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"): w_t = min(pi_learner(y_t) / pi_rollout(y_t), cap).

    The rollout engine (e.g. vLLM) samples from a slightly different distribution than the learner's
    own forward pass; weighting the policy-gradient loss by w corrects that, the cap bounds the variance.
    ``learner_logp`` is the learner's log-prob under the behaviour (old) weights. Detached, 0 on padding.
    """
    with torch.no_grad():
        log_ratio = _masked_log_ratio(learner_logp, rollout_logp, mask)
        return torch.exp(log_ratio).clamp(max=cap) * mask.to(log_ratio.dtype)


def logprob_mismatch(learner_logp: Tensor, rollout_logp: Tensor, mask: Tensor) -> float:
    """Mean |learner_logp - rollout_logp| over valid tokens (0.0 if none): a health metric for the
    rollout-engine / learner numerical mismatch."""
    with torch.no_grad():
        diff = torch.where(mask.bool(), (learner_logp - rollout_logp).abs(), torch.zeros_like(learner_logp))
        return _masked_mean(diff, mask).item()
