"""Reward models in the Hugging Face style: the RewardModel interface and the scalar (BT / causal / WARM)
model. It imports no other kind; `alignray.rewards.loading.load_reward_model` loads every kind.

Save format: a directory with `alignray_rm.json` ({"kind": ..., "format_version": 1, ...}) and HF subfolders
that load with `from_pretrained`. A plain HF sequence-classification directory (num_labels=1) loads as a
scalar model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alignray.rewards.encoding import default_pooling, encode_pairs, pool

RM_CONFIG_FILE = "alignray_rm.json"
FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 512


class RewardModel(nn.Module):
    """One scalar reward per (prompt, response); subclasses may add per-member or per-head columns.

    forward(input_ids, attention_mask, ...) → dict with at least "reward" [B]; `score` runs it batched on
    text.
    """

    kind = "abstract"

    def __init__(self, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        batch = encode_pairs(self.tokenizer, prompts, responses, self.max_length)
        return {k: v.to(self.device) for k, v in batch.items()}

    def columns(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The score columns for one forward output; the final reward is always under "reward"."""
        return {"reward": out["reward"]}

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> dict[str, np.ndarray]:
        """Score (prompt, response) pairs in eval mode; every column is a float array [n]."""
        if len(prompts) != len(responses):
            raise ValueError(f"score got {len(prompts)} prompts but {len(responses)} responses")
        if len(prompts) == 0:
            raise ValueError("score needs at least one (prompt, response) pair")
        was_training = self.training
        self.eval()
        parts = []
        for start in range(0, len(prompts), batch_size):
            batch = self.encode(list(prompts[start : start + batch_size]),
                                list(responses[start : start + batch_size]))
            out = self(batch["input_ids"], batch["attention_mask"])
            parts.append({k: v.detach().float().cpu().numpy() for k, v in self.columns(out).items()})
        self.train(was_training)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def save(self, path: str | Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement save")

    @classmethod
    def load(cls, path: Path, config: dict[str, Any], trust_remote_code: bool = False) -> RewardModel:
        raise NotImplementedError(f"{cls.__name__} must implement load")


def write_rm_config(path: str | Path, kind: str, **fields: Any) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "kind": kind, **fields}
    (path / RM_CONFIG_FILE).write_text(json.dumps(config, indent=2))


def save_hf(module, tokenizer, directory: Path) -> None:
    module.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


class ScalarRewardModel(RewardModel):
    """AutoModelForSequenceClassification with num_labels=1. BT, causal (MMD-regularised) and WARM models
    share this architecture; `trained_with` records which, and the causal RM needs its attribute only during
    training."""

    kind = "scalar"

    def __init__(self, backbone, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, trained_with: str = "bt",
                 pooling: str | None = None, metadata: dict[str, Any] | None = None):
        super().__init__(tokenizer, max_length)
        if getattr(backbone.config, "num_labels", 1) != 1:
            raise ValueError(f"a scalar reward model needs num_labels=1, got {backbone.config.num_labels}")
        self.backbone = backbone
        self.trained_with = trained_with
        self.pooling = pooling or default_pooling(backbone.config.model_type)
        self.metadata = dict(metadata or {})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_representation: bool = False) -> dict[str, torch.Tensor]:
        """reward [B] from the classification head; optionally the pooled last hidden layer [B, H] (for MMD on
        representations)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=return_representation)
        result = {"reward": out.logits[:, 0]}
        if return_representation:
            result["representation"] = pool(out.hidden_states[-1], attention_mask, self.pooling)
        return result

    def save(self, path: str | Path) -> None:
        path = Path(path)
        save_hf(self.backbone, self.tokenizer, path / "model")
        write_rm_config(path, self.kind, subfolder="model", trained_with=self.trained_with,
                        max_length=self.max_length, pooling=self.pooling, metadata=self.metadata)

    @classmethod
    def load(cls, path: Path, config: dict[str, Any], trust_remote_code: bool = False) -> ScalarRewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = path / config.get("subfolder", "model")
        backbone = AutoModelForSequenceClassification.from_pretrained(directory,
                                                                      trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        return cls(backbone, tokenizer, config.get("max_length", DEFAULT_MAX_LENGTH),
                   config.get("trained_with", "unknown"), config.get("pooling"), config.get("metadata"))
