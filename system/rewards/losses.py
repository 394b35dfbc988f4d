"""Pairwise preference losses: Bradley-Terry, DPO and their HAF-RM mixture.

All functions take per-pair tensors of shape [B] and return a scalar mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignray.algorithms.logprobs import logprobs_from_logits


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood of the observed preferences.

    L = -mean_i log σ(r_chosen_i - r_rejected_i - m_i)

    The BT model says P(chosen ≻ rejected) = σ(r_c - r_r). An optional margin m (Llama-2 style, e.g. from a
    preference strength) asks the reward gap to exceed m before the loss flattens. `-log σ(x)` is computed as
    `softplus(-x)`, which is exact and does not overflow for large |x|.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} "
                         "differ in shape")
    gap = r_chosen - r_rejected
    if margin is not None:
        gap = gap - margin
    return F.softplus(-gap).mean()


def dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Direct Preference Optimisation loss (Rafailov et al. 2023) on summed response log-probabilities.

    L = -mean_i log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

    β·(log π - log π_ref) is the policy's implicit reward; the loss is BT on that implicit reward.
    """
    chosen_logratio = policy_chosen_logp - ref_chosen_logp
    rejected_logratio = policy_rejected_logp - ref_rejected_logp
    return F.softplus(-beta * (chosen_logratio - rejected_logratio)).mean()


def dpo_implicit_reward(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Implicit DPO reward of one response: r(x, y) = β (log π(y|x) - log π_ref(y|x))."""
    return beta * (policy_logp - ref_logp)


def haf_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    alpha: float = 0.2,
    beta: float = 0.1,
    bt_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """HAF-RM hybrid loss (arXiv 2407.04185): L = w_BT · BT(reward head) + α · DPO_β(LM head), w_BT = 1.

    Both heads share one trunk, so the policy-side DPO signal regularises the representation the scalar reward
    head reads. Defaults α = 0.2, β = 0.1 follow the official code. bt_weight = 0 gives plain DPO (a
    baseline). Returns the loss and its two parts.
    """
    bt = bradley_terry_loss(r_chosen, r_rejected)
    dpo = dpo_loss(policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=beta)
    return bt_weight * bt + alpha * dpo, {"bt_loss": float(bt.detach()), "dpo_loss": float(dpo.detach())}


def summed_response_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over the response tokens of each row.

    logits [B, T, V] predict token t+1 at position t, so the log-prob of token t is read from position t-1.
    response_mask [B, T] is 1 on response tokens (never on position 0). Returns [B].
    """
    token_logp = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])  # no [B, T, V] log-softmax
    return (token_logp * response_mask[:, 1:].to(token_logp.dtype)).sum(-1)
