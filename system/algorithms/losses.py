"""Per-token policy-gradient and value losses: PPO clipped surrogate (+dual clip, TIS weights) and the clipped
value loss, before any aggregation (the learner's Objective aggregates them with global normalisers).

Conventions as in ``advantages``: [B, T] token tensors, ``mask`` [B, T] with 1 on response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from alignray.algorithms.kl import LOG_RATIO_CLAMP

AggMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGG_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _masked_log_ratio(logp: Tensor, other_logp: Tensor, mask: Tensor) -> Tensor:
    """logp - other_logp, 0 on padding (so exp() of padding garbage can't make inf/NaN), clamped."""
    diff = torch.where(mask.bool(), logp - other_logp, torch.zeros_like(logp))
    return diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


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


def value_loss_per_token(values: Tensor, old_values: Tensor, returns: Tensor,
                         clip_eps: float | None = 0.2) -> Tensor:
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
