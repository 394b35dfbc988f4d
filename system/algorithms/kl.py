"""Per-token KL estimators between the policy and a reference policy.

Schulman, "Approximating KL Divergence" (2020): with tokens sampled from the policy pi and
log_ratio = log pi(x) - log pi_ref(x), three Monte-Carlo estimators of KL(pi || pi_ref):

    k1 = log_ratio                               unbiased, high variance, can be negative
    k2 = 0.5 * log_ratio**2                      biased, low variance, >= 0
    k3 = exp(-log_ratio) - 1 + log_ratio         unbiased, low variance, >= 0
                                                 (= r - 1 - log r, r = pi_ref/pi)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3"]
KL_KINDS: tuple[str, ...] = ("k1", "k2", "k3")

# exp(20) ~ 4.9e8 is still finite in fp16/bf16/fp32; beyond that k3 would overflow to inf.
LOG_RATIO_CLAMP = 20.0


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token KL(pi || pi_ref) estimate, same shape as ``logp``.

    log_ratio = clamp(logp - ref_logp, -20, 20); the clamp keeps k3's exp() finite (and zeroes the
    gradient for absurdly off tokens, which only happen with garbage inputs such as padding).
    Padding positions are NOT masked here: mask them in the aggregation (see ``losses.kl_loss``).
    """
    log_ratio = (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.exp(-log_ratio) - 1.0 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")
