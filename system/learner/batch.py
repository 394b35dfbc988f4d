"""From a scored Arrow batch to training tensors, memory-lean log-probs, values and advantages.

Pure torch (no Ray, no DeepSpeed): the LearnerWorker calls these with whatever model object it owns.
Layout: each row is prompt ⧺ response, right-padded to L; response token t of row b sits at position
prompt_len[b] + t and is predicted by the logits at prompt_len[b] − 1 + t. The response mask is 1 on the
tokens the loss counts: in multi-turn episodes only the policy's (`loss_mask`); observation tokens are in the
forward as context, and every loss term, advantage and normaliser reads them through the mask as absent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from alignray.algorithms.advantages import Reduce, compute_advantages
from alignray.algorithms.kl import kl_estimate
from alignray.algorithms.logprobs import entropy_from_logits, logprobs_from_logits
from alignray.algorithms.overlong import overlong_penalty, truncated_rows
from alignray.config_sections import AlgoConfig, OverlongConfig
from alignray.errors import SchemaError
from alignray.learner.packing import PackedRows, Packing, pack_rows, packed_logits, packed_outputs, unpack


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
    prompt_lengths: torch.Tensor  # [B]
    response_lengths: torch.Tensor  # [B] (response_mask may be zeroed: a masked dummy row keeps its length)
    loss_rows: torch.Tensor  # [B] float: 1 = in the loss, 0 = masked out whole (algo.overlong filter)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> SequenceBatch:
        return SequenceBatch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def ragged_to_torch(column: pa.Array) -> tuple[torch.Tensor, torch.Tensor]:
    """A list<int32|float32> column as (flat values, int64 offsets [B+1]) torch tensors.

    The values tensor aliases the Arrow buffer (no copy; read-only memory, so never write into it).
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks != 1:
            raise SchemaError(f"ragged column must be one chunk, got {column.num_chunks}")
        column = column.chunk(0)
    values = column.flatten().to_numpy(zero_copy_only=True)
    offsets = np.asarray(column.offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only Arrow memory: torch warns, we only read
        flat = torch.from_numpy(values)
    return flat, torch.from_numpy(offsets)


def pad_ragged(flat: torch.Tensor, offsets: torch.Tensor, pad_value: float = 0,
               width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a ragged (values, offsets) pair into [B, T] plus a bool mask, with one vectorised scatter."""
    lengths = offsets[1:] - offsets[:-1]
    rows = lengths.numel()
    width = int(lengths.max()) if width is None and rows else (width or 0)
    out = torch.full((rows, width), pad_value, dtype=flat.dtype)
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    out[mask] = flat[: int(offsets[-1])]
    return out, mask


def sequences_from_batch(batch: pa.RecordBatch, pad_token_id: int, overlong: OverlongConfig | None = None,
                         max_new_tokens: int = 0) -> SequenceBatch:
    """Arrow → tensors: ragged columns are read zero-copy, then padded once into [B, L] / [B, T].

    `overlong` (algo.overlong, alignray.algorithms.overlong): `filter` zeroes the response mask and
    `loss_rows` of truncated answers; `penalty` adds R_len(|y|) (L_max = `max_new_tokens`) to `rewards`."""
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
    if "loss_mask" in batch.schema.names:  # episodes: observation tokens (0) are context, never in the loss
        lm_flat, _ = ragged_to_torch(batch.column("loss_mask"))
        mask = mask & pad_ragged(lm_flat.bool(), r_off, False, width=t_width)[0]
    logit_index = (p_len.unsqueeze(1) - 1 + torch.arange(t_width).unsqueeze(0)).clamp(max=max(width - 1, 0))
    prompt_ids = torch.from_numpy(batch.column("prompt_id").to_numpy().astype(np.int64))
    rewards = torch.from_numpy(batch.column("reward").to_numpy().astype(np.float32))
    mode = overlong.mode if overlong is not None else "none"
    loss_rows = (~truncated_rows(batch)).float() if mode == "filter" else torch.ones(rows)
    if mode == "penalty":
        rewards = rewards + overlong_penalty(r_len, max_new_tokens, overlong.buffer)
    return SequenceBatch(
        input_ids=input_ids, attention_mask=(prompt_part | resp_part).long(), response_tokens=response_tokens,
        response_mask=mask.float() * loss_rows.unsqueeze(1), logit_index=logit_index,
        rollout_logprobs=logprobs,
        rewards=rewards, group_ids=torch.unique(prompt_ids, return_inverse=True)[1], prompt_lengths=p_len,
        response_lengths=r_len, loss_rows=loss_rows,
    )


POSITIONS_PER_CHUNK = 1024
"""Packed log-probs upcast half-precision logits this many positions at a time."""


def packed_rows(model, seq: SequenceBatch, packing: Packing) -> PackedRows:
    """`seq` as packed rows (alignray.learner.packing), the mask in the model's dtype."""
    dtype = next(getattr(model, "module", model).parameters()).dtype
    return pack_rows(seq.input_ids, seq.attention_mask, seq.prompt_lengths, seq.response_lengths,
                     seq.response_tokens.shape[1], packing, dtype)


def _packed_logprobs(model, seq: SequenceBatch, temperature: float, entropy: bool, entropy_grad: bool,
                     packing: Packing) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`forward_logprobs` on packed rows: logits [K, V] of the K response tokens only, read in chunks of
    POSITIONS_PER_CHUNK (half-precision logits are upcast a block at a time), scattered back into [B, T]."""
    rows = packed_rows(model, seq, packing)
    logits = packed_logits(model, rows)
    targets = seq.response_tokens[rows.token_mask]
    logp = torch.cat([logprobs_from_logits(z[None], y[None], temperature)[0]
                      for z, y in zip(logits.split(POSITIONS_PER_CHUNK), targets.split(POSITIONS_PER_CHUNK),
                                      strict=True)]) if len(targets) else logits.new_zeros(0)
    logp = unpack(logp.float(), rows.token_mask) * seq.response_mask
    if not entropy:
        return logp, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        ent = unpack(entropy_from_logits(logits.float() / temperature), rows.token_mask) * seq.response_mask
    return logp, ent


def response_window_logits(model, seq: SequenceBatch) -> tuple[torch.Tensor, int]:
    """Logits [B, L − s, V] of positions s … L−1 only, s = the first position any row reads (shortest prompt −
    1).

    `logits_to_keep` (every HF causal LM) skips the LM head on the shared prompt prefix: no [B, L, V] tensor.
    Models without it get the full logits and s = 0.
    """
    start = int(seq.logit_index.min()) if seq.logit_index.numel() else 0
    if start > 0:
        try:
            keep = seq.input_ids.shape[1] - start
            return model(input_ids=seq.input_ids, attention_mask=seq.attention_mask,
                         logits_to_keep=keep).logits, start
        except TypeError:  # a model whose forward has no logits_to_keep
            pass
    return model(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits, 0


def forward_logprobs(model, seq: SequenceBatch, temperature: float, entropy: bool = False,
                     entropy_grad: bool = False, packing: Packing | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) [B, T] from one forward, and optionally the entropy H_t [B, T] of the same
    positions.

    log π = z[y] − logsumexp(z), z = logits/T, read at every position of the response window's logits (target
    = the next input token) and then gathered at the response positions: the only [·, ·, V] tensor kept for
    the backward is the window's logits, no log-softmax beside it and no [B, T, V] copy. The entropy, which
    needs the full softmax, is computed only if asked, and off the graph unless `entropy_grad` (an entropy
    bonus in the loss).

    `packing` (the model's attention implementation and the packed rows' bound): the same values from packed
    rows without padding (alignray.learner.packing); None: the right-padded rows.
    """
    if packing is not None:
        return _packed_logprobs(model, seq, temperature, entropy, entropy_grad, packing)
    logits, start = response_window_logits(model, seq)
    targets = torch.roll(seq.input_ids, -1, dims=1)[:, start:]  # position p predicts token p + 1
    index = seq.logit_index - start
    logp = logprobs_from_logits(logits, targets, temperature).gather(1, index).float() * seq.response_mask
    if not entropy:
        return logp, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        rows = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        ent = entropy_from_logits(rows.float() / temperature) * seq.response_mask
    return logp, ent


def response_values(critic, seq: SequenceBatch, packing: Packing | None = None) -> torch.Tensor:
    """V(s_t) for each response token: the critic's output at the position that predicts token t (`packing`:
    from packed rows, as in `forward_logprobs`)."""
    if packing is not None:
        rows = packed_rows(critic, seq, packing)
        values = packed_outputs(critic(**rows.model_inputs()).logits[..., 0], rows)
        return unpack(values.float(), rows.token_mask) * seq.response_mask
    out = critic(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits.squeeze(-1)
    return out.gather(1, seq.logit_index).float() * seq.response_mask


def advantages_for(seq: SequenceBatch, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
                   values: torch.Tensor | None, algo: AlgoConfig, reduce: Reduce | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages (and returns for PPO) of this shard, equal to those of the whole step's batch: groups are
    never split, and the batch-wide whitening of REINFORCE++/PPO takes its statistics through `reduce` (an
    all-reduce). KL is folded into the reward (from π_old and π_ref) when kl_mode is `reward`."""
    token_kl = None
    if old_logp is not None and ref_logp is not None and algo.kl_mode == "reward" and algo.kl_coef > 0:
        token_kl = kl_estimate(old_logp, ref_logp, algo.kl_estimator) * seq.response_mask
    return compute_advantages(
        algo.name, seq.rewards, seq.group_ids, seq.response_mask, token_kl=token_kl,
        kl_coef=algo.kl_coef if token_kl is not None else 0.0, values=values, gamma=algo.gamma, lam=algo.lam,
        **({"reduce": reduce} if reduce is not None else {}))
