"""From a scored Arrow batch to training tensors, log-probs, advantages and the loss of one micro-batch.

Pure torch (no Ray, no DeepSpeed): the LearnerWorker calls these with whatever model object it owns.
Layout: each row is prompt ⧺ response, right-padded to L; response token t of row b sits at position
prompt_len[b] + t and is predicted by the logits at prompt_len[b] − 1 + t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from alignray.algorithms import (
    aggregate,
    compute_advantages,
    entropy_from_logits,
    kl_estimate,
    kl_loss,
    policy_loss,
    truncated_is_weights,
    value_loss,
)
from alignray.config import AlgoConfig
from alignray.schema import pad_ragged, ragged_to_torch


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, L] prompt ⧺ response, right-padded
    attention_mask: torch.Tensor  # [B, L]
    response_tokens: torch.Tensor  # [B, T]
    response_mask: torch.Tensor  # [B, T] float
    logit_index: torch.Tensor  # [B, T] position of the logits that predict each response token
    rollout_logprobs: torch.Tensor  # [B, T] what the engine reported
    rewards: torch.Tensor  # [B]
    group_ids: torch.Tensor  # [B] samples of one prompt share a group

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> SequenceBatch:
        return SequenceBatch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def sequences_from_batch(batch: pa.RecordBatch, pad_token_id: int) -> SequenceBatch:
    """Arrow → tensors: ragged columns are read zero-copy, then padded once into [B, L] / [B, T]."""
    p_flat, p_off = ragged_to_torch(batch.column("prompt_tokens"))
    r_flat, r_off = ragged_to_torch(batch.column("response_tokens"))
    lp_flat, _ = ragged_to_torch(batch.column("response_logprobs"))
    p_len, r_len = p_off[1:] - p_off[:-1], r_off[1:] - r_off[:-1]
    rows = len(p_len)
    width = int((p_len + r_len).max()) if rows else 0
    # Scatter prompt and response tokens into one right-padded matrix.
    pos = torch.arange(width).unsqueeze(0)
    prompt_part = pos < p_len.unsqueeze(1)
    resp_part = (pos >= p_len.unsqueeze(1)) & (pos < (p_len + r_len).unsqueeze(1))
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    input_ids[prompt_part] = p_flat.long()
    input_ids[resp_part] = r_flat.long()
    response_tokens, mask = pad_ragged(r_flat.long(), r_off, pad_token_id)
    logprobs, _ = pad_ragged(lp_flat.float(), r_off, 0.0, width=response_tokens.shape[1])
    t_width = response_tokens.shape[1]
    logit_index = (p_len.unsqueeze(1) - 1 + torch.arange(t_width).unsqueeze(0)).clamp(max=max(width - 1, 0))
    prompt_ids = torch.from_numpy(batch.column("prompt_id").to_numpy().astype(np.int64))
    return SequenceBatch(
        input_ids=input_ids, attention_mask=(prompt_part | resp_part).long(), response_tokens=response_tokens,
        response_mask=mask.float(), logit_index=logit_index, rollout_logprobs=logprobs,
        rewards=torch.from_numpy(batch.column("reward").to_numpy().astype(np.float32)),
        group_ids=torch.unique(prompt_ids, return_inverse=True)[1],
    )


def response_logits(model, seq: SequenceBatch) -> torch.Tensor:
    """[B, T, V] logits that predict each response token (one forward over prompt ⧺ response)."""
    logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits
    index = seq.logit_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index).float()


def response_logprobs(logits: torch.Tensor, seq: SequenceBatch, temperature: float) -> torch.Tensor:
    lp = torch.log_softmax(logits / temperature, dim=-1)
    return lp.gather(-1, seq.response_tokens.unsqueeze(-1)).squeeze(-1) * seq.response_mask


def response_values(critic, seq: SequenceBatch) -> torch.Tensor:
    """V(s_t) for each response token: the critic's output at the position that predicts token t."""
    out = critic(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits.squeeze(-1)
    return out.gather(1, seq.logit_index).float() * seq.response_mask


def advantages_for(seq: SequenceBatch, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                   values: torch.Tensor | None, algo: AlgoConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages (and returns for PPO) of the whole step's batch, with KL folded into the reward if so configured."""
    token_kl = None
    if ref_logp is not None and algo.kl_mode == "reward" and algo.kl_coef > 0:
        token_kl = kl_estimate(old_logp, ref_logp, algo.kl_estimator) * seq.response_mask
    return compute_advantages(
        algo.name, seq.rewards, seq.group_ids, seq.response_mask, token_kl=token_kl,
        kl_coef=algo.kl_coef if token_kl is not None else 0.0, values=values, gamma=algo.gamma, lam=algo.lam)


def micro_batch_loss(model, seq: SequenceBatch, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                     advantages: torch.Tensor, algo: AlgoConfig, temperature: float, norm_len: int
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy loss (+ KL loss term, − entropy bonus, × TIS weights) of one micro-batch."""
    logits = response_logits(model, seq)
    logp = response_logprobs(logits, seq, temperature)
    mask = seq.response_mask
    is_weights = None
    if algo.tis_cap is not None:
        is_weights = truncated_is_weights(old_logp, seq.rollout_logprobs, mask, algo.tis_cap)
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_eps=algo.clip_eps,
                              clip_eps_high=algo.clip_eps_high, dual_clip=algo.dual_clip, agg=algo.loss_agg,
                              is_weights=is_weights, norm_len=norm_len)
    stats = {"loss/policy": float(loss.detach()), **{f"policy/{k}": v for k, v in stats.items()}}
    entropy = entropy_from_logits(logits / temperature)
    stats["entropy"] = float(aggregate(entropy.detach(), mask, "token_mean"))
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * aggregate(entropy, mask, algo.loss_agg, norm_len)
    if ref_logp is not None:
        kl = kl_estimate(logp.detach(), ref_logp, algo.kl_estimator)
        stats["kl"] = float(aggregate(kl, mask, "token_mean"))
        if algo.kl_mode == "loss" and algo.kl_coef > 0:
            loss = loss + algo.kl_coef * kl_loss(logp, ref_logp, mask, algo.kl_estimator, algo.loss_agg, norm_len)
    return loss, stats


def critic_loss(critic, seq: SequenceBatch, old_values: torch.Tensor, returns: torch.Tensor,
                algo: AlgoConfig) -> torch.Tensor:
    values = response_values(critic, seq)
    return value_loss(values, old_values, returns, seq.response_mask, algo.value_clip, "token_mean")
