"""`alignray rm train` run config: the reward-model recipe (RewardTrainConfig) plus data and DeepSpeed ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from alignray.config import Section, apply_overrides, format_validation_error, read_yaml
from alignray.errors import ConfigError
from alignray.rewards.train_config import RewardTrainConfig


class RmLearnerConfig(Section):
    num_ranks: int = Field(2, ge=1)
    zero_stage: int = Field(1, ge=0, le=2)
    """0-2: every rank holds the full model, so rank 0 saves it as is (ZeRO-3 is for the RL learner)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(1, ge=1)


class RmRunConfig(Section):
    data: str
    """Preference pairs: .jsonl / .parquet with prompt, chosen, rejected (+ chosen_<attr>/rejected_<attr>, ratings)."""
    eval_data: str | None = None
    """Held-out pairs: evaluated after training, written to OUT/eval.json."""
    attributes: list[str] | None = None
    """Attribute columns to read; empty auto-detects them from the first row."""
    model: RewardTrainConfig
    """The recipe: kind (bt, causal, haf, multihead, ensemble), backbone (base_model or tiny_model), loss settings."""
    learner: RmLearnerConfig = RmLearnerConfig()
    ray_address: str | None = None

    @model_validator(mode="after")
    def _batch_fits_mmd(self) -> RmRunConfig:
        if self.model.kind == "causal" and self.model.batch_size < 2 * self.model.mmd_num_bins:
            raise ValueError(f"model.batch_size={self.model.batch_size} pairs per rank leaves bins of "
                             f"model.mmd_num_bins={self.model.mmd_num_bins} mostly empty: use at least twice as many")
        return self


def load_rm_config(path: str | Path, overrides: list[str] | None = None) -> RmRunConfig:
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        return RmRunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path), RmRunConfig)) from None


def load_training_data(cfg: RmRunConfig):
    from alignray.rewards.preference_data import load_preferences

    return load_preferences(cfg.data, attributes=cfg.attributes)
