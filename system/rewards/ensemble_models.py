"""Ensembles of independently trained reward models (members in subfolders), and WARM: the weight average of
members that share an initialisation, served as one scalar model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alignray.rewards.ensemble import AGGREGATIONS, aggregate, member_std, warm_average
from alignray.rewards.models import RewardModel, ScalarRewardModel, write_rm_config


class EnsembleRewardModel(RewardModel):
    """k independent members (any kind; each keeps its own tokenizer). reward = aggregation over members'
    rewards ("mean", "lcb" β=coef, "worst_case", "uncertainty_weighted" λ=coef; std/var with `ddof`)."""

    kind = "ensemble"

    def __init__(self, members: list[RewardModel], aggregation: str = "mean", coef: float | None = None,
                 ddof: int = 0):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}: use one of {', '.join(AGGREGATIONS)}")
        super().__init__(members[0].tokenizer, members[0].max_length)
        self.members = nn.ModuleList(members)
        self.aggregation, self.coef, self.ddof = aggregation, coef, ddof

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Valid when members share the tokenizer (e.g. all fine-tuned from one base); `score` has no such
        need."""
        rewards = torch.stack([m(input_ids, attention_mask)["reward"] for m in self.members])
        return {"reward": aggregate(rewards, self.aggregation, self.coef, self.ddof), "members": rewards}

    def _columns_from(self, rewards: np.ndarray) -> dict[str, np.ndarray]:
        cols = {"reward": aggregate(rewards, self.aggregation, self.coef, self.ddof)}
        cols.update({f"member_{i}": r for i, r in enumerate(rewards)})
        cols.update(mean=rewards.mean(0), std=member_std(rewards, self.ddof), min=rewards.min(0))
        return cols

    def columns(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in self._columns_from(out["members"].cpu().numpy()).items()}

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str], batch_size: int = 32) -> dict[str, np.ndarray]:
        rewards = np.stack([m.score(prompts, responses, batch_size)["reward"] for m in self.members])
        return self._columns_from(rewards)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        names = [f"member_{i}" for i in range(len(self.members))]
        for name, member in zip(names, self.members, strict=True):
            member.save(path / name)
        write_rm_config(path, self.kind, members=names, aggregation=self.aggregation, coef=self.coef,
                        ddof=self.ddof)

    @classmethod
    def from_config(cls, members: list[RewardModel], config: dict[str, Any]) -> EnsembleRewardModel:
        """The ensemble saved with `config` (alignray_rm.json), from its loaded members
        (alignray.rewards.loading loads them: members may be of any kind)."""
        return cls(members, config.get("aggregation", "mean"), config.get("coef"), config.get("ddof", 0))


def warm_model(members: list[ScalarRewardModel], weights: list[float] | None = None) -> ScalarRewardModel:
    """WARM: one ScalarRewardModel whose parameters are the (weighted) average of the members' parameters."""
    if not members or not all(isinstance(m, ScalarRewardModel) for m in members):
        raise ValueError("WARM averages scalar reward models (same architecture, same initialisation)")
    averaged = warm_average([m.backbone.state_dict() for m in members], weights)
    merged = copy.deepcopy(members[0])
    merged.backbone.load_state_dict(averaged)
    merged.trained_with = "warm"
    merged.metadata = {**members[0].metadata, "warm_members": len(members),
                       "warm_trained_with": members[0].trained_with}
    return merged
