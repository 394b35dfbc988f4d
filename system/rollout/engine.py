"""The rollout engine interface every generation backend implements (transformers `generate`, vLLM).

An engine generates from token ids and returns token ids plus per-token log-probs of the temperature-scaled
policy (log softmax(logits / T) at the sampled token: the quantity the learner recomputes), and loads new
weights in place. `build_rollout_batch` turns its output into the Arrow rollout batch, so every engine emits
the same schema.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from alignray.config_sections import RolloutConfig
from alignray.schema import FLOATS, TOKENS, check_batch, list_array


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0


@dataclass
class Completion:
    """One sampled response: token ids, their log-probs, and why generation stopped ('stop' or 'length')."""

    tokens: np.ndarray
    logprobs: np.ndarray
    finish_reason: str


class RolloutEngine(Protocol):
    def generate(self, prompts: list[np.ndarray], sampling: SamplingSettings) -> list[list[Completion]]:
        """For each prompt (int32 token ids) return `sampling.n` completions."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy these parameters into the running engine in place; returns how many tensors were loaded."""

    def logprobs(self, prompts: list[np.ndarray], responses: list[np.ndarray],
                 temperature: float) -> list[np.ndarray]:
        """Per-token log-probs of given responses under the engine's current weights (parity checks)."""


def truncate_at_stop(tokens: np.ndarray, stop_ids: set[int]) -> tuple[int, str]:
    """Length to keep (the stop token included) and the finish reason."""
    for i, tok in enumerate(tokens.tolist()):
        if tok in stop_ids:
            return i + 1, "stop"
    return len(tokens), "length"


def build_rollout_batch(prompt_batch: pa.RecordBatch, completions: list[list[Completion]], version: int,
                        decode) -> pa.RecordBatch:
    """Rows: one per (prompt, sample), stamped with the policy version that generated them."""
    prompt_rows = [i for i, group in enumerate(completions) for _ in group]
    flat = [c for group in completions for c in group]
    take = pa.array(prompt_rows, type=pa.int64())
    batch = pa.record_batch({
        "prompt_id": prompt_batch.column("prompt_id").take(take),
        "prompt": prompt_batch.column("prompt").take(take),
        "prompt_tokens": prompt_batch.column("prompt_tokens").take(take),
        "sample_index": pa.array([j for group in completions for j in range(len(group))], type=pa.int32()),
        "response": pa.array([decode(c.tokens) for c in flat], type=pa.string()),
        "response_tokens": list_array([c.tokens for c in flat], TOKENS.value_type),
        "response_logprobs": list_array([c.logprobs for c in flat], FLOATS.value_type),
        "policy_version": pa.array(np.full(len(flat), version, dtype=np.int64)),
        "finish_reason": pa.array([c.finish_reason for c in flat], type=pa.string()),
    })
    return check_batch(batch, "rollout", "rollout engine output")


def generate_rollout(engine: RolloutEngine, tokenizer, rc: RolloutConfig, prompts: pa.RecordBatch, seed: int,
                     version: int, who: str, on_error: str = "fail") -> tuple[pa.RecordBatch, dict]:
    """One prompt batch through `engine` with the `rollout` settings: the rollout batch (stamped with
    `version`) and the few scalars the driver reads (`meta`). `who` names the generating actor in errors and
    in `meta`. With `rollout.env` every sample is a multi-turn episode (alignray.rollout.episodes), whose
    environment failures follow `on_error` (`reward.on_error`)."""
    t0 = time.perf_counter()
    check_batch(prompts, "prompt", f"{who} input")
    decode = lambda t: tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
    sampling = SamplingSettings(max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                                n=rc.samples_per_prompt, stop_token_ids=tuple(rc.stop_token_ids), seed=seed)
    if rc.env:
        from alignray.rollout.episodes import build_episode_batch, run_episodes

        episodes, meta = run_episodes(engine, tokenizer, rc, prompts, sampling, on_error)
        batch = build_episode_batch(prompts, episodes, version, decode)
        return batch, {"worker": who, "samples": batch.num_rows, "policy_version": version,
                       "seconds": time.perf_counter() - t0, **meta}
    column = prompts.column("prompt_tokens")
    completions = engine.generate([column[i].values.to_numpy() for i in range(prompts.num_rows)], sampling)
    batch = build_rollout_batch(prompts, completions, version, decode)
    new_tokens = sum(len(c.tokens) for group in completions for c in group)
    return batch, {"worker": who, "samples": batch.num_rows, "new_tokens": new_tokens,
                   "policy_version": version, "seconds": time.perf_counter() - t0}
