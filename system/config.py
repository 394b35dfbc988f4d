"""A run's configuration: the root `Config` (its sections are in alignray.config_sections) with the checks
across sections, YAML loading, presets and dotted command-line overrides.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from alignray.algorithms.estimators import GROUP_BASED
from alignray.config_sections import (
    AlgoConfig,
    DataConfig,
    LearnerConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    Section,
    TrainConfig,
)
from alignray.errors import ConfigError, format_validation_error

PRESETS = ("quickstart", "rm-quickstart")


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algo: AlgoConfig = AlgoConfig()
    learner: LearnerConfig = LearnerConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _cross_field(self) -> Config:
        if self.algo.name in GROUP_BASED and self.rollout.samples_per_prompt < 2:
            raise ValueError(f"algo.name={self.algo.name} compares samples of one prompt: "
                             "rollout.samples_per_prompt must be at least 2")
        if self.train.max_staleness > 0 and self.train.sync_interval != 1:
            raise ValueError("train.max_staleness > 0 (async) needs train.sync_interval = 1")
        names = [s.name for s in self.reward.scorers]
        if not names and not self.rollout.env:
            raise ValueError("reward.scorers is empty: give a scorer, or an environment (rollout.env)")
        if self.rollout.env and "env" in names:
            raise ValueError("reward.scorers: the name 'env' is the environment's reward (reward_env)")
        self._check_dapo()
        if self.train.colocate:
            self._check_colocate()
        if self.model.lora is not None and self.learner.zero_stage > 2:
            raise ValueError(f"model.lora needs learner.zero_stage at most 2 (got {self.learner.zero_stage})")
        return self

    def _check_dapo(self) -> None:
        a = self.algo
        if a.dynamic_sampling and a.name not in GROUP_BASED:
            raise ValueError(f"algo.dynamic_sampling needs a group-based algo.name "
                             f"({', '.join(GROUP_BASED)}): it drops prompt groups whose samples share one "
                             f"reward (got {a.name})")
        budget = self.rollout.episode_tokens  # L_max: what a sample may hold after its prompt
        name = "the episode's token budget" if self.rollout.env else "rollout.max_new_tokens"
        if a.overlong.mode == "penalty" and not 1 <= a.overlong.buffer <= budget:
            raise ValueError(f"algo.overlong.buffer must be 1 … {name} ({budget}) with "
                             f"algo.overlong.mode=penalty (got {a.overlong.buffer})")

    def _check_colocate(self) -> None:
        needs = {"rollout.engine": (self.rollout.engine == "hf",
                                    f"'hf' (got '{self.rollout.engine}'; vLLM shares "
                                    "a GPU with the learner through rollout.vllm.sleep instead)"),
                 "learner.zero_stage": (self.learner.zero_stage <= 2,
                                        f"at most 2 (got {self.learner.zero_stage}: "
                                        "ZeRO-3 ranks hold only a shard of each weight)"),
                 "train.sync_interval": (self.train.sync_interval == 1,
                                         f"1 (got {self.train.sync_interval}: the "
                                         "ranks always sample with the weights they train)"),
                 "rollout.autoscale": (not self.rollout.autoscale.enabled, "off (there is no rollout pool)"),
                 "reward.autoscale": (not self.reward.autoscale.enabled, "off (there is no reward pool)"),
                 "reward.service.enabled": (not self.reward.service.enabled,
                                            "false (no reward worker calls it: the ranks load the models)")}
        for field, (ok, wanted) in needs.items():
            if not ok:
                raise ValueError(f"train.colocate needs {field} {wanted}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a","b","c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.field=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:  # absent, or an empty section (`lora: null`): `model.lora.r=8` opens it
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def preset_text(name: str) -> str:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return resources.files("alignray.presets").joinpath(f"{name}.yaml").read_text()


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (or the quickstart preset when `path` is None), apply dotted overrides, validate."""
    if path is None:
        data, source = yaml.safe_load(preset_text("quickstart")) or {}, "preset quickstart"
    else:
        data, source = read_yaml(path), str(path)
    data = apply_overrides(data, overrides or [])
    if overrides:
        source += " + overrides " + " ".join(overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, Config)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
