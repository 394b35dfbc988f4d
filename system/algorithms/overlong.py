"""Overlong shaping (DAPO, arXiv 2503.14476 §3.4): what to do with answers cut at `rollout.max_new_tokens`.

A truncated answer (finish_reason "length") is judged on an unfinished text: its reward is noise about its
quality. `algo.overlong.mode`:

- `filter` (overlong filtering): truncated answers are masked out of the loss — their tokens count in no
  `loss_agg` normaliser and their row in no sequence or row count (`truncated_rows`, then the learner's
  `loss_rows`); their reward still counts in their group's baseline;
- `penalty` (soft overlong punishment): a length-aware penalty is added to every answer's reward before the
  advantages (`overlong_penalty`), with L_max = the sample's token budget (`rollout.max_new_tokens`; in
  multi-turn episodes the episode's, `rollout.max_episode_tokens`, which counts the observations' tokens too,
  and so does |y|) and L_cache = `algo.overlong.buffer`:

      R_len(y) = 0                              if |y| ≤ L_max − L_cache
               = ((L_max − L_cache) − |y|) / L_cache    if L_max − L_cache < |y| ≤ L_max
               = −1                             if |y| > L_max

  so the penalty falls linearly from 0 to −1 across the last L_cache tokens of the budget (|y| in tokens).

Pure torch, no Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

MODES = ("none", "filter", "penalty")


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """R_len of each response length (the formula above), float32; `buffer` = L_cache ≥ 1."""
    if buffer < 1:
        raise ValueError(f"overlong_penalty: buffer (L_cache) must be at least 1, got {buffer}")
    lengths = lengths.to(torch.float32)
    free = float(max_len - buffer)
    soft = ((free - lengths) / buffer).clamp(max=0.0)
    return torch.where(lengths > max_len, torch.full_like(lengths, -1.0), soft)


def truncated_rows(batch: pa.RecordBatch) -> torch.Tensor:
    """[B] bool: the rows whose answer was cut at the token budget (finish_reason "length")."""
    hit = pc.equal(batch.column("finish_reason"), "length").to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.asarray(hit, dtype=bool))
