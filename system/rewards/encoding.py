"""Turning (prompt, response) text into model inputs, and pooling hidden states — shared by training and
scoring so the two can never disagree."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Encoder families whose natural sentence representation is the mean over tokens (sentence-transformers
# style); everything else (decoder-only LMs) reads the last non-pad token, which has attended to the whole
# sequence.
MEAN_POOLED_MODEL_TYPES = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra",
                           "xlm-roberta", "mpnet"}


def default_pooling(model_type: str) -> str:
    return "mean" if model_type in MEAN_POOLED_MODEL_TYPES else "last"


def _special(tokenizer, *names: str) -> list[int]:
    for name in names:
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            return [token_id]
    return []


def pad_token_id(tokenizer) -> int:
    """The pad id; tokenizers without one fall back to unk, then eos (documented: with pad == eos the final
    eos is treated as padding by HF sequence classifiers, consistently in training and scoring)."""
    for name in ("pad", "unk", "eos"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            return token_id
    raise ValueError("tokenizer has no pad, unk or eos token; add a pad token before training a reward model")


def encode_pairs(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int = 512
) -> dict[str, torch.Tensor]:
    """Layout: [CLS|BOS] prompt [SEP] response [EOS|SEP], right-padded.

    Returns input_ids, attention_mask and response_mask [B, T] (1 on response tokens and the closing token,
    whose log-probs DPO sums). Over-long pairs keep the first tokens of the response — at least half the
    budget — and the last tokens of the prompt.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    start, sep = _special(tokenizer, "cls", "bos"), _special(tokenizer, "sep")
    end = _special(tokenizer, "eos", "sep")
    budget = max_length - len(start) - len(sep) - len(end)
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for text")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    rows, masks = [], []
    for p, r in zip(prompt_ids, response_ids, strict=True):
        keep_r = min(len(r), max(budget - len(p), budget // 2))
        keep_p = min(len(p), budget - keep_r)
        p = p[len(p) - keep_p :]
        head = start + p + sep
        body = r[:keep_r] + end
        rows.append(head + body)
        masks.append([0] * len(head) + [1] * len(body))
    width = max(len(row) for row in rows)
    pad = pad_token_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        response_mask[i, : len(row)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H] → [B, H]: "last" = last non-pad token (right padding), "mean" = masked mean, "first" = token
    0."""
    if pooling == "last":
        last = attention_mask.sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean":
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    if pooling == "first":
        return hidden[:, 0]
    raise ValueError(f"unknown pooling {pooling!r}: use 'last', 'mean' or 'first'")
