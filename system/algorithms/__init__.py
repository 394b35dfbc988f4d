"""RL algorithm math as small pure torch functions (no ray, no transformers)."""

from alignray.algorithms.advantages import (
    ALGORITHMS,
    compute_advantages,
    discounted_returns,
    dr_grpo_advantages,
    gae_advantages,
    group_mean_std,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    token_level_rewards,
    whiten,
)
from alignray.algorithms.kl import KL_KINDS, kl_estimate
from alignray.algorithms.losses import (
    AGG_MODES,
    aggregate,
    entropy_from_logits,
    kl_loss,
    logprob_mismatch,
    logprobs_from_logits,
    policy_loss,
    truncated_is_weights,
    value_loss,
)

__all__ = [
    "AGG_MODES",
    "ALGORITHMS",
    "KL_KINDS",
    "aggregate",
    "compute_advantages",
    "discounted_returns",
    "dr_grpo_advantages",
    "entropy_from_logits",
    "gae_advantages",
    "group_mean_std",
    "grpo_advantages",
    "kl_estimate",
    "kl_loss",
    "logprob_mismatch",
    "logprobs_from_logits",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "token_level_rewards",
    "truncated_is_weights",
    "value_loss",
    "whiten",
]
