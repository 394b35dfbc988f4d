"""The learner's objective: which terms apply, and the normaliser of each `loss_agg` from *global* counts.

Pure torch, no Ray, no DeepSpeed. A step's (mini-)batch is split over R ranks × M micro-batches; the loss of
one micro-batch is written as a partial sum over its tokens divided by a denominator D of the whole
(mini-)batch:

    L = Σ_{ranks, micro-batches}  Σ_{tokens t of the micro-batch}  w_t · ℓ_t  /  D

    token_mean:               w_t = 1,          D = N_tokens            (every token of the batch weighs
                                                                         the same)
    seq_mean_token_mean:      w_t = 1 / |y_i|,  D = N_sequences (rows with ≥ 1 token)
    seq_mean_token_sum_norm:  w_t = 1,          D = N_rows · norm_len   (Dr. GRPO's constant normaliser)

ℓ_t = clipped surrogate (× TIS weight) − entropy_coef · H_t + [kl_mode=loss] kl_coef · KL_t. N_* are counted
over every rank and micro-batch (`batch_counts`, summed by one all-reduce before the backward passes), so the
gradient equals the one-big-batch gradient whatever R and M are — `aggregate(x, m, mode)` on the whole batch
is the same number. Rows masked out whole (`algo.overlong: filter`, SequenceBatch.loss_rows = 0) count in no
N_*: the loss is that of the batch without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignray.algorithms.advantages import Reduce
from alignray.algorithms.estimators import ESTIMATORS
from alignray.algorithms.kl import kl_estimate
from alignray.algorithms.losses import policy_loss_per_token, truncated_is_weights, value_loss_per_token
from alignray.config_sections import AlgoConfig


def batch_counts(mask: Tensor, loss_rows: Tensor | None = None) -> Tensor:
    """(valid tokens, rows with ≥ 1 valid token, rows) of a [B, T] mask, float64 [3]: summable over shards.

    `loss_rows` [B] (SequenceBatch.loss_rows): 0 marks a row masked out of the loss whole — an answer that
    `algo.overlong: filter` drops — which then counts in no normaliser, not even as a row; default all 1."""
    m = mask.to(torch.float64)
    rows = (torch.tensor(float(mask.shape[0]), dtype=torch.float64) if loss_rows is None
            else loss_rows.to(torch.float64).sum())
    return torch.stack([m.sum(), (m.sum(dim=1) > 0).to(torch.float64).sum(), rows])


def normaliser(mode: str, counts: Tensor, norm_len: int) -> float:
    """D of `mode` from the (tokens, sequences, rows) counts of the whole batch; at least 1 (an empty batch
    gives 0)."""
    tokens, sequences, rows = (float(c) for c in counts)
    if mode == "token_mean":
        return max(tokens, 1.0)
    if mode == "seq_mean_token_mean":
        return max(sequences, 1.0)
    if mode == "seq_mean_token_sum_norm":
        return max(rows * norm_len, 1.0)
    raise ValueError(f"unknown aggregation mode {mode!r}")


def aggregate_sum(per_token: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Σ_t w_t · x_t over the valid tokens of this shard (w_t = 1/|y_i| for seq_mean_token_mean, else 1).

    aggregate(x, m, mode, L) == aggregate_sum(x, m, mode) / normaliser(mode, batch_counts(m), L).
    """
    m = mask.to(per_token.dtype)
    x = torch.where(m != 0, per_token * m, torch.zeros_like(per_token))
    if mode == "seq_mean_token_mean":
        return (x.sum(dim=1) / m.sum(dim=1).clamp(min=1)).sum()
    if mode in ("token_mean", "seq_mean_token_sum_norm"):
        return x.sum()
    raise ValueError(f"unknown aggregation mode {mode!r}")


@dataclass
class Tally:
    """Statistics as (numerator, denominator) sums: one all-reduce turns every rank's partial sums into global
    ratios.

    Every rank must add the same keys (they depend on the config, never on the data).
    """

    num: dict[str, float] = field(default_factory=dict)
    den: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, num: float, den: float) -> None:
        self.num[key] = self.num.get(key, 0.0) + num
        self.den[key] = self.den.get(key, 0.0) + den

    def ratios(self, reduce: Reduce) -> dict[str, float]:
        keys = sorted(self.num)
        vec = reduce(torch.tensor([self.num[k] for k in keys] + [self.den[k] for k in keys],
                                  dtype=torch.float64))
        n = len(keys)
        return {k: float(vec[i] / vec[n + i]) if float(vec[n + i]) else float("nan") for i,
                k in enumerate(keys)}


@dataclass(frozen=True)
class Objective:
    """Which terms a step needs and the loss of one micro-batch as its share of the whole batch's loss."""

    algo: AlgoConfig
    temperature: float
    norm_len: int

    @property
    def kl_in_loss(self) -> bool:
        return self.algo.kl_coef > 0 and self.algo.kl_mode == "loss"

    @property
    def kl_in_reward(self) -> bool:
        return self.algo.kl_coef > 0 and self.algo.kl_mode == "reward"

    @property
    def uses_reference(self) -> bool:
        """The reference forward runs only when the KL enters the loss or reward, or is asked for as a
        metric."""
        return self.algo.kl_coef > 0 or self.algo.log_kl

    @property
    def uses_critic(self) -> bool:
        return ESTIMATORS[self.algo.name].critic

    def needs_old_forward(self, on_policy: bool) -> bool:
        """π_old equals the detached training forward when the batch was sampled by the current weights and
        the policy takes one optimizer step on it (ppo_epochs = mini_batches = 1); KL-in-reward needs π_old
        before the advantages, so it keeps the separate forward. With `old_logprobs: rollout` π_old is the
        engine's."""
        if self.algo.old_logprobs == "rollout":
            return False
        single_update = self.algo.ppo_epochs == 1 and self.algo.mini_batches == 1
        return not (on_policy and single_update) or self.kl_in_reward

    def denominator(self, counts: Tensor) -> float:
        return normaliser(self.algo.loss_agg, counts, self.norm_len)

    def policy_loss(self, logp: Tensor, entropy: Tensor | None, old_logp: Tensor | None,
                    ref_logp: Tensor | None,
                    rollout_logp: Tensor, advantages: Tensor, mask: Tensor, counts: Tensor,
                    tally: Tally) -> Tensor:
        """This micro-batch's share of the batch's policy loss (`counts`: the whole batch's); statistics →
        `tally`.

        old_logp None means on-policy: π_old = logp.detach(), so the ratio is 1 with the gradient of the
        surrogate.
        """
        a = self.algo
        old = logp.detach() if old_logp is None else old_logp
        is_weights = truncated_is_weights(old, rollout_logp, mask,
                                          a.tis_cap) if a.tis_cap is not None else None
        terms = policy_loss_per_token(logp, old, advantages, mask, clip_eps=a.clip_eps,
                                      clip_eps_high=a.clip_eps_high,
                                      dual_clip=a.dual_clip, is_weights=is_weights)
        per_token = terms.loss
        if a.entropy_coef and entropy is not None:
            per_token = per_token - a.entropy_coef * entropy
        kl = kl_estimate(logp, ref_logp.detach(), a.kl_estimator) if ref_logp is not None else None
        if kl is not None and self.kl_in_loss:
            per_token = per_token + a.kl_coef * kl
        loss = aggregate_sum(per_token, mask, a.loss_agg) / self.denominator(counts)
        with torch.no_grad():
            m = mask.to(torch.float64)
            tokens = float(m.sum())

            def token_sum(x: Tensor) -> float:
                return float((x.to(torch.float64) * m).sum())

            tally.add("policy/clip_frac", token_sum(terms.clipped), tokens)
            tally.add("policy/dual_clip_frac", token_sum(terms.dual_clipped), tokens)
            tally.add("policy/approx_kl", token_sum(terms.ratio - 1.0 - terms.log_ratio), tokens)
            tally.add("policy/ratio_mean", token_sum(terms.ratio), tokens)
            learner_old = logp.detach() if old_logp is None or a.old_logprobs == "rollout" else old_logp
            tally.add("logprob_mismatch", token_sum((learner_old - rollout_logp).abs()), tokens)
            if entropy is not None:
                tally.add("entropy", token_sum(entropy.detach()), tokens)
            if kl is not None:
                tally.add("kl", token_sum(kl.detach()), tokens)
        return loss

    def value_loss(self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                   counts: Tensor) -> Tensor:
        """This micro-batch's share of the clipped value loss, a token mean over the whole batch."""
        per_token = value_loss_per_token(values, old_values, returns, self.algo.value_clip)
        return aggregate_sum(per_token, mask, "token_mean") / normaliser("token_mean", counts, self.norm_len)
