"""Shared trunk + Linear(hidden, K) heads: the multi-head (per-rule) regression RM with ENCORE weights, and
the linear-head ensemble (k heads on one trunk, arXiv 2401.16635)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignray.rewards.encoding import default_pooling, pool
from alignray.rewards.encore import EncoreWeights
from alignray.rewards.ensemble import aggregate, member_std
from alignray.rewards.models import DEFAULT_MAX_LENGTH, RewardModel, save_hf, write_rm_config


class HeadsRewardModel(RewardModel):
    """role "multihead": ψ = heads(pooled) [B, K] (one rating per rule), reward φ = ψ @ w with ENCORE weights
    w (uniform until `set_encore` is called). role "ensemble": each head is a member; reward = `aggregation`
    of them."""

    kind = "heads"

    def __init__(self, trunk, tokenizer, head_names: list[str], role: Literal["multihead",
                                                                              "ensemble"] = "multihead",
                 max_length: int = DEFAULT_MAX_LENGTH, pooling: str | None = None,
                 encore: EncoreWeights | None = None, aggregation: str = "mean", coef: float | None = None,
                 ddof: int = 0):
        super().__init__(tokenizer, max_length)
        if not head_names:
            raise ValueError("HeadsRewardModel needs at least one head")
        if role not in ("multihead", "ensemble"):
            raise ValueError(f"role must be 'multihead' or 'ensemble', got {role!r}")
        self.trunk = trunk
        self.head_names = list(head_names)
        self.role = role
        self.pooling = pooling or default_pooling(trunk.config.model_type)
        self.heads = nn.Linear(trunk.config.hidden_size, len(head_names))
        self.aggregation, self.coef, self.ddof = aggregation, coef, ddof
        self.encore: EncoreWeights | None = None
        self.register_buffer("head_weights", torch.full((len(head_names),), 1.0 / len(head_names)))
        if encore is not None:
            self.set_encore(encore)

    def set_encore(self, encore: EncoreWeights) -> None:
        if encore.head_names != self.head_names:
            raise ValueError(f"ENCORE heads {encore.head_names} do not match model heads {self.head_names}")
        self.encore = encore
        self.head_weights.copy_(torch.tensor(encore.weights))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_representation: bool = False) -> dict[str, torch.Tensor]:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        representation = pool(hidden, attention_mask, self.pooling)
        heads = self.heads(representation)
        if self.role == "multihead":
            reward = heads @ self.head_weights.to(heads.dtype)
        else:
            reward = aggregate(heads.T, self.aggregation, self.coef, self.ddof)
        out = {"reward": reward, "heads": heads}
        if return_representation:
            out["representation"] = representation
        return out

    def columns(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        heads = out["heads"]
        if self.role == "multihead":
            cols = {f"head_{name}": heads[:, i] for i, name in enumerate(self.head_names)}
            cols.update({f"weight_{name}": self.head_weights[i].expand(heads.shape[0])
                         for i, name in enumerate(self.head_names)})
        else:
            cols = {f"member_{i}": heads[:, i] for i in range(heads.shape[1])}
            cols.update(mean=heads.mean(1), std=member_std(heads.T, self.ddof), min=heads.min(1).values)
        return {"reward": out["reward"], **cols}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        save_hf(self.trunk, self.tokenizer, path / "trunk")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()},
                  str(path / "heads.safetensors"))
        if self.encore is not None:
            self.encore.save(path / "encore.json")
        write_rm_config(path, self.kind, subfolder="trunk", role=self.role, head_names=self.head_names,
                        max_length=self.max_length, pooling=self.pooling, aggregation=self.aggregation,
                        coef=self.coef, ddof=self.ddof, encore="encore.json" if self.encore else None)

    @classmethod
    def load(cls, path: Path, config: dict[str, Any], trust_remote_code: bool = False) -> HeadsRewardModel:
        from transformers import AutoModel, AutoTokenizer

        directory = path / config.get("subfolder", "trunk")
        trunk = AutoModel.from_pretrained(directory, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        encore = EncoreWeights.load(path / config["encore"]) if config.get("encore") else None
        model = cls(trunk, tokenizer, config["head_names"], config.get("role", "multihead"),
                    config.get("max_length", DEFAULT_MAX_LENGTH), config.get("pooling"), encore,
                    config.get("aggregation", "mean"), config.get("coef"), config.get("ddof", 0))
        model.heads.load_state_dict(load_file(str(path / "heads.safetensors")))
        return model
