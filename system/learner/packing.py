"""Packed micro-batches (`learner.packing`): a micro-batch's sequences laid end to end, without padding.

The B sequences of lengths n_b (prompt ⧺ response) fill packed rows in order: a row takes the next sequence
while it holds at most `learner.pack_row_tokens` tokens (a longer sequence gets a row of its own; empty: one
row for the whole micro-batch). In a row, sequence b starts at column o_b, its positions restart at 0
(position_ids), and token i attends to token j only when both are in the same sequence and j ≤ i (a
block-diagonal causal mask). Each sequence so sees exactly what it sees in its own padded row: logits,
log-probs and gradients are those of the padded layout (up to float rounding), and no FLOP goes to padding
except the tail of the shorter rows. The dense mask costs W² per row of W tokens, which is why rows are
bounded.

The mask by attention implementation: `sdpa` and `eager` get a 4D additive mask [R, 1, W, W] (0 where allowed,
the dtype's minimum elsewhere), which every transformers model passes through as is; `flash_attention_2`
gets none and always one row: transformers reads the sequence boundaries from position_ids (its varlen path,
no quadratic mask). Only the LM-head columns that predict a response token are computed (`logits_to_keep`).

Pure torch, no model code: `alignray.learner.batch` runs the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MASKED_IMPLEMENTATIONS = ("sdpa", "eager")
"""Attention implementations that take the packed layout as a 4D mask; any other reads position_ids."""
PAD_SEGMENT = -1
"""Segment id of a row's padding tail: it attends only to itself and is never read."""


@dataclass(frozen=True)
class Packing:
    """How the learner packs: the model's attention implementation and the row bound (None: one row)."""

    attn_implementation: str
    row_tokens: int | None = None


@dataclass
class PackedRows:
    input_ids: Tensor  # [R, W]
    position_ids: Tensor  # [R, W], restarting at 0 for every sequence (and for a row's padding tail)
    attention_mask: Tensor | None  # [R, 1, W, W] additive block-diagonal causal mask, or None (varlen)
    row: Tensor  # [K] the row of each response token's logits
    column: Tensor  # [K] their column
    token_mask: Tensor  # [B, T] bool: the K response tokens, in row-major order = the order of row/column

    def model_inputs(self) -> dict[str, Tensor | None | bool]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                "attention_mask": self.attention_mask, "use_cache": False}


def auto_row_tokens(hidden_size: int) -> int:
    """`learner.pack_row_tokens: auto` = max(256, hidden size d).

    Per token, a row of W tokens under the dense mask spends ≈ 4·W·d attention FLOPs against the linear
    layers' 24·d², so W = d keeps attention at about 1/6 of them; rows of at least 256 tokens leave little
    padding at their tails. E.g. d 128 → 256, d 1024 → 1024."""
    return max(256, int(hidden_size))


def token_chunks(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive items in chunks of at most `budget` tokens (greedy; an item longer than the budget gets
    one of its own), as positions into `lengths`.

    E.g. lengths [3, 4, 2, 6, 1], budget 7 → [0, 1] (7 tokens), [2] (2 + 6 > 7), [3, 4] (7)."""
    chunks: list[np.ndarray] = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > budget:
            chunks.append(np.arange(start, i))
            start, used = i, 0
        used += int(n)
    if len(lengths) > start:
        chunks.append(np.arange(start, len(lengths)))
    return chunks


def row_layout(lengths: np.ndarray, row_tokens: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(row r_b, start column o_b) of every sequence, and the row width W = the fullest row's tokens.

    E.g. lengths [3, 4, 2], row_tokens 7 → rows [0, 0, 1], starts [0, 3, 0], W 7; row_tokens None → one row:
    rows [0, 0, 0], starts [0, 3, 7], W 9."""
    if not len(lengths):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    chunks = token_chunks(lengths, row_tokens) if row_tokens else [np.arange(len(lengths))]
    rows, starts = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
    for r, chunk in enumerate(chunks):
        rows[chunk] = r
        starts[chunk] = np.cumsum(lengths[chunk]) - lengths[chunk]
    return rows, starts, int(max(lengths[c].sum() for c in chunks))


def positions(lengths: Tensor) -> Tensor:
    """Position of every token within its sequence, for sequences laid end to end: [Σ n_b].

    E.g. lengths [2, 3, 1] → [0, 1, 0, 1, 2, 0]."""
    starts = torch.cumsum(lengths, 0) - lengths
    return torch.arange(int(lengths.sum()), device=lengths.device) - torch.repeat_interleave(starts, lengths)


def block_causal_mask(segments: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask [R, 1, W, W] from segment ids [R, W]: 0 where key j may be seen by query i (same segment,
    j ≤ i), else the dtype's minimum.

    E.g. segments [[0, 0, 1]] → allowed (0,0), (1,0), (1,1), (2,2)."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def pack_rows(input_ids: Tensor, attention_mask: Tensor, prompt_lengths: Tensor, response_lengths: Tensor,
              width: int, packing: Packing, dtype: torch.dtype) -> PackedRows:
    """Right-padded rows [B, L] (their `attention_mask` 1 on the prompt ⧺ response tokens) → packed rows;
    `width` = T, the response width of the [B, T] tensors the results are read back into.

    Response token t of sequence b is predicted by the logits at (r_b, o_b + p_b − 1 + t), p_b its prompt
    length, for t < its response length."""
    device = input_ids.device
    lengths = attention_mask.sum(dim=1).long()
    masked = packing.attn_implementation in MASKED_IMPLEMENTATIONS
    rows_np, starts_np, row_width = row_layout(lengths.cpu().numpy(), packing.row_tokens if masked else None)
    rows, starts = torch.from_numpy(rows_np).to(device), torch.from_numpy(starts_np).to(device)
    n_rows = int(rows_np.max()) + 1 if len(rows_np) else 1
    dest = torch.repeat_interleave(rows * row_width + starts, lengths) + positions(lengths)  # flat index
    ids = input_ids.new_zeros(n_rows * row_width)
    ids[dest] = input_ids[attention_mask.bool()]
    segments = torch.full((n_rows * row_width,), PAD_SEGMENT, dtype=torch.long, device=device)
    segments[dest] = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    segments = segments.view(n_rows, row_width)
    # positions restart per sequence; a padding tail counts from 0 as a segment of its own
    fill = torch.zeros(n_rows, dtype=torch.long, device=device).index_add_(0, rows, lengths)
    column = torch.arange(row_width, device=device)
    pos = (column[None, :] - fill[:, None]).clamp(min=0).flatten()
    pos[dest] = positions(lengths)
    t = torch.arange(width, device=device)
    token_mask = t[None, :] < response_lengths.long()[:, None]
    cols = (starts + prompt_lengths.long() - 1)[:, None] + t[None, :]
    return PackedRows(ids.view(n_rows, row_width), pos.view(n_rows, row_width),
                      block_causal_mask(segments, dtype) if masked else None,
                      rows[:, None].expand_as(cols)[token_mask], cols[token_mask], token_mask)


def unpack(values: Tensor, token_mask: Tensor) -> Tensor:
    """Values [K] of the response tokens back into [B, T] (0 elsewhere), differentiably."""
    return values.new_zeros(token_mask.shape).masked_scatter(token_mask, values)


def packed_logits(model, packed: PackedRows) -> Tensor:
    """The model's logits [K, V] of the response tokens: the LM head runs only on the columns some row needs
    (`logits_to_keep` as an index tensor); models without it compute all columns."""
    one_row = packed.input_ids.shape[0] == 1  # then the columns are distinct and ascending: keep them all
    keep, index = (packed.column, None) if one_row else torch.unique(packed.column, return_inverse=True)
    try:
        logits = model(**packed.model_inputs(), logits_to_keep=keep).logits
    except TypeError:  # a model whose forward has no logits_to_keep
        return model(**packed.model_inputs()).logits[packed.row, packed.column]
    return logits[0] if one_row else logits[packed.row, index]


def packed_outputs(out: Tensor, packed: PackedRows) -> Tensor:
    """A per-position model output [R, W, ...] (e.g. a critic's values) at the response tokens: [K, ...]."""
    return out[packed.row, packed.column]
