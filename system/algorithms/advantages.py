"""Advantage estimators for RLHF: GRPO, Dr. GRPO, RLOO, REINFORCE++ (+baseline) and PPO/GAE.

Conventions: token tensors are [B, T] (right-padded responses), ``mask`` is [B, T] with 1 on real
response tokens, sequence rewards are [B], ``group_ids`` is int64 [B] (samples of one prompt share
an id; groups may have any size, including 1). Every advantage returned is [B, T] and already
multiplied by ``mask``, so padding positions are exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from alignray.algorithms.estimators import ALGORITHMS


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def _broadcast(seq_values: Tensor, mask: Tensor) -> Tensor:
    """[B] sequence values -> [B, T] per-token values, zero on padding."""
    return seq_values[:, None] * mask.to(seq_values.dtype)


# --------------------------------------------------------------------------- group statistics


def group_mean_std(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (group mean, group std, group size), each [B].

    std is the UNBIASED sample std (divide by G-1), matching ``torch.std`` as used by the GRPO
    reference implementations (TRL, OpenRLHF, verl). A group of size 1 gets std 0 (not NaN).
    Group size is returned in ``values``' float dtype so it can be used in arithmetic directly.
    Group ids need not be contiguous or sorted.
    """
    values = _as_float(values)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts = counts.to(values.dtype)
    zeros = torch.zeros(counts.numel(), dtype=values.dtype, device=values.device)
    mean_g = zeros.index_add(0, inverse, values) / counts
    mean = mean_g[inverse]
    sq_dev_g = zeros.index_add(0, inverse, (values - mean).square())
    std_g = (sq_dev_g / (counts - 1).clamp(min=1)).sqrt()  # size-1 group: 0 / 1 = 0
    return mean, std_g[inverse], counts[inverse]


def grpo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO (Shao et al. 2024): A_i = (r_i - mean_g) / (std_g + eps), same value on every token.

    Size-1 groups and groups with identical rewards get A = 0 (numerator is exactly 0).
    """
    rewards = _as_float(rewards)
    mean, std, _ = group_mean_std(rewards, group_ids)
    return _broadcast((rewards - mean) / (std + eps), mask)


def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean_g.

    Dropping the std division removes GRPO's question-difficulty bias (low-variance groups being
    up-weighted); pair it with ``aggregate(..., "seq_mean_token_sum_norm")`` to also remove the length bias.
    """
    rewards = _as_float(rewards)
    mean, _, _ = group_mean_std(rewards, group_ids)
    return _broadcast(rewards - mean, mask)


def rloo_advantages(rewards: Tensor, group_ids: Tensor, mask: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - (sum_{j!=i} r_j)/(G-1) = G/(G-1) * (r_i - mean_g).

    The leave-one-out baseline is independent of sample i, so the estimator stays unbiased.
    A group of size 1 has no other sample to form a baseline: A = 0.
    """
    rewards = _as_float(rewards)
    mean, _, size = group_mean_std(rewards, group_ids)
    scale = size / (size - 1).clamp(min=1)  # size 1: r - mean == 0 anyway, avoid inf * 0
    return _broadcast(scale * (rewards - mean), mask)


# --------------------------------------------------------------------------- token-level returns


def token_level_rewards(
    rewards: Tensor, mask: Tensor, token_kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token rewards [B, T]: r_t = -kl_coef * kl_t on every valid token, plus the sequence
    reward r on the LAST valid token of each row (the reward model scores the whole response).

    Rows with no valid token get all zeros (their sequence reward is dropped).
    """
    rewards = _as_float(rewards)
    m = mask.to(rewards.dtype)
    out = torch.zeros_like(m)
    if token_kl is not None and kl_coef != 0.0:
        out = out - kl_coef * token_kl.to(rewards.dtype) * m
    positions = torch.arange(m.shape[1], device=m.device, dtype=m.dtype)
    last = (positions * (m > 0)).argmax(dim=1)  # index of the last valid token (ties -> first = 0)
    has_tokens = (m > 0).any(dim=1).to(rewards.dtype)
    one_hot = torch.nn.functional.one_hot(last, m.shape[1]).to(rewards.dtype)
    return out + one_hot * (rewards * has_tokens)[:, None]


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{k>=t} gamma^(k-t) r_k over valid tokens, [B, T], zero on padding.

    Masked positions are skipped (they neither add reward nor count as a discount step), which
    for right-padded rows is the plain reverse discounted sum.
    """
    m = mask.to(token_rewards.dtype)
    r = token_rewards * m
    if gamma == 1.0:
        return r.flip(1).cumsum(1).flip(1) * m
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = torch.where(m[:, t] > 0, r[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns * m


Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over every rank of the step (an all-reduce); the identity for a single process."""


def _local(x: Tensor) -> Tensor:
    return x


def whiten_stats(x: Tensor, mask: Tensor) -> Tensor:
    """(n, Σx, Σx²) over the valid tokens, float64 [3]: summable across shards, so whitening can be global."""
    m = mask.to(torch.float64)
    x64 = x.detach().to(torch.float64) * m
    return torch.stack([m.sum(), x64.sum(), (x64 * x64).sum()])


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
           reduce: Reduce = _local) -> Tensor:
    """Masked batch normalisation: (x - mean) / sqrt(var + eps) over all valid tokens of the batch.

    var is the population (biased, divide by N) variance, as OpenRLHF's REINFORCE++. With
    ``shift_mean=False`` the mean is added back (only rescaled). Output is zero on padding.
    mean = Σx/n, var = Σx²/n − mean², from ``reduce(whiten_stats(x, mask))`` in float64: with an all-reduce
    as ``reduce`` every rank whitens by the statistics of the whole step's batch, not of its shard.
    """
    n, total, total_sq = reduce(whiten_stats(x, mask)).tolist()
    n = max(n, 1.0)
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    out = (x - mean) * (1.0 / math.sqrt(var + eps))
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def reinforce_pp_advantages(
    rewards: Tensor,
    mask: Tensor,
    token_kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    reduce: Reduce = _local,
) -> Tensor:
    """REINFORCE++ (Hu 2025): A_t = whiten(G_t), G_t = discounted return of the token-level rewards
    (sequence reward on the last token, -kl_coef*kl_t per token). Global batch whitening replaces a
    critic / per-prompt baseline.
    """
    token_rewards = token_level_rewards(rewards, mask, token_kl, kl_coef)
    return whiten(discounted_returns(token_rewards, mask, gamma), mask, reduce=reduce)


def reinforce_pp_baseline_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    token_kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    reduce: Reduce = _local,
) -> Tensor:
    """REINFORCE++-baseline (OpenRLHF "reinforce_baseline"): r_i <- r_i - mean_g, then REINFORCE++.

    The per-prompt mean baseline removes prompt difficulty; the batch whitening then sets the scale.
    """
    rewards = _as_float(rewards)
    mean, _, _ = group_mean_std(rewards, group_ids)
    return reinforce_pp_advantages(rewards - mean, mask, token_kl, kl_coef, gamma, reduce)


def gae_advantages(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016), returns (advantages, returns), [B, T].

    delta_t = r_t + gamma * V_{t+1} - V_t  (V beyond the last valid token = 0),
    A_t = sum_l (gamma*lam)^l delta_{t+l},  returns_t = A_t + V_t (value-function targets).
    Masked positions are skipped like in ``discounted_returns``. Values are detached; advantages are
    NOT whitened here (``compute_advantages("ppo", ...)`` does that).
    """
    values = values.detach().to(token_rewards.dtype)
    m = mask.to(token_rewards.dtype)
    r = token_rewards.detach() * m
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    last_gae = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        valid = m[:, t] > 0
        delta = r[:, t] + gamma * next_value - values[:, t]
        gae = delta + gamma * lam * last_gae
        last_gae = torch.where(valid, gae, last_gae)
        next_value = torch.where(valid, values[:, t], next_value)
        advantages[:, t] = gae
    advantages = advantages * m
    return advantages, (advantages + values) * m


# --------------------------------------------------------------------------- dispatcher


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    *,
    token_kl: Tensor | None = None,
    kl_coef: float = 0.0,
    values: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    reduce: Reduce = _local,
) -> tuple[Tensor, Tensor | None]:
    """Dispatch to an estimator by name; returns (advantages [B, T], returns [B, T] or None), detached.

    - grpo / dr_grpo / rloo: outcome-level. In KL-in-reward mode (``token_kl`` given and
      ``kl_coef > 0``) the sequence reward becomes r - kl_coef * sum_t kl_t (sum over valid tokens)
      BEFORE group normalisation, so the KL penalty is normalised like the reward.
    - reinforce_pp / reinforce_pp_baseline: the KL penalty goes per token (``token_level_rewards``).
    - ppo: GAE on ``token_level_rewards(rewards, mask, token_kl, kl_coef)`` with ``values``, then the
      advantages are whitened; the GAE returns are returned as value targets.
    Only "ppo" returns returns; the others return None. Groups must not be split across shards; the batch-wide
    whitening of reinforce_pp* and ppo uses ``reduce`` (an all-reduce) so a shard gets the whole batch's
    values.
    """
    rewards = _as_float(rewards)
    mask_f = mask.to(rewards.dtype)
    if name in ("grpo", "dr_grpo", "rloo"):
        if token_kl is not None and kl_coef > 0:
            rewards = rewards - kl_coef * (token_kl.to(rewards.dtype) * mask_f).sum(dim=1)
        fn = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}[name]
        return fn(rewards, group_ids, mask_f).detach(), None
    if name == "reinforce_pp":
        return reinforce_pp_advantages(rewards, mask_f, token_kl, kl_coef, gamma, reduce).detach(), None
    if name == "reinforce_pp_baseline":
        adv = reinforce_pp_baseline_advantages(rewards, group_ids, mask_f, token_kl, kl_coef, gamma, reduce)
        return adv.detach(), None
    if name == "ppo":
        if values is None:
            raise ValueError("compute_advantages('ppo', ...) requires `values` (critic estimates, [B, T])")
        token_rewards = token_level_rewards(rewards, mask_f, token_kl, kl_coef)
        adv, returns = gae_advantages(token_rewards, values, mask_f, gamma, lam)
        return whiten(adv, mask_f, reduce=reduce).detach(), returns.detach()
    raise ValueError(f"unknown advantage estimator {name!r}; expected one of {ALGORITHMS}")
