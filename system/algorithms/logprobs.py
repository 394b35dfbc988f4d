"""Log-probabilities and entropies from logits: shared by the rollout engines, the learner and the reward
models."""

from __future__ import annotations

import torch
from torch import Tensor


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-position entropy [B, T, V] -> [B, T]: H = logsumexp(z) - sum_v softmax(z)_v * z_v.

    Equal to -sum p log p but without log(0); stable for large logits (logsumexp / softmax subtract
    the max). Logits must be finite (no -inf vocab masking). Computed in the logits' dtype:
    upcast bf16 logits first if you need fp32 precision.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at ``tokens``: [B, T, V], [B, T] -> [B, T].

    Computed as z[token] - logsumexp(z), never materialising the full log-softmax. fp32/fp64
    logits are done in one shot; half-precision logits are upcast one row at a time (fp32 accuracy
    at the memory cost of a single [T, V] fp32 block), as TRL's ``selective_log_softmax``.
    The temperature must match the one used by the rollout engine for log-probs to agree.
    """
    if temperature != 1.0:
        logits = logits / temperature
    index = tokens.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row = row_logits.float()
        rows.append(row.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)
