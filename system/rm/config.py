"""RewardTrainConfig: the one config of reward-model training — the recipe (kind, backbone, loss settings)
and, for an `alignray rm train` run, its data, evaluation data and DeepSpeed ranks. In process
(`train_reward_model`, the benchmarks, tests) only the recipe matters: `RewardTrainConfig(kind="bt",
tiny_model=...)`.

YAML: every field at the top level; the older layout, the recipe under `model:`, still loads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alignray.config import apply_overrides, preset_text, read_yaml
from alignray.config_sections import RanksConfig
from alignray.errors import ConfigError, format_validation_error
from alignray.rm.backbones import TinyModelSpec


class RankConfig(RanksConfig):
    """The DeepSpeed ranks of a run (`learner:` in YAML)."""

    zero_stage: int = Field(1, ge=0, le=2)
    """0-2: every rank holds the full model, so rank 0 saves it as is (ZeRO-3 is for the RL learner)."""


class RewardTrainConfig(BaseModel):
    """kind picks the loss: bt = Bradley-Terry; causal = BT + λ·Σ MMD² over bins of a spurious attribute;
    haf = BT(reward head) + α·DPO_β(LM head); multihead = MSE of K rule heads on ratings, then ENCORE weights;
    ensemble = k members (independent / linear heads on one trunk / LoRA members / WARM weight average)."""

    model_config = ConfigDict(extra="forbid")

    # ---- a run (`alignray rm train`; unused in process) ----------------------------------------------------
    data: str | None = None
    """Preference pairs: .jsonl / .parquet with prompt, chosen, rejected (+ chosen_<attr>/rejected_<attr>,
    ratings), a hub dataset name, or `builtin:restaurants` (the embedded example; `builtin:restaurants-test`
    is its test set)."""
    eval_data: str | None = None
    """Held-out pairs: evaluated after training, written to RUN/eval.json."""
    attributes: list[str] | None = None
    """Attribute columns to read; None auto-detects them from the first row."""
    learner: RankConfig = Field(default_factory=RankConfig)
    ray_address: str | None = None
    oversubscribe: bool = False
    """On a local Ray, more ranks than 4 per CPU core is an error before anything starts; `true` runs
    anyway."""
    progress: bool = True
    """The progress bar (loss, accuracy) on the terminal; on a pipe, a plain line every 10% of a fit."""

    # ---- the recipe ----------------------------------------------------------------------------------------
    kind: Literal["bt", "causal", "haf", "multihead", "ensemble"] = "bt"
    # backbone: exactly one of a pretrained path (or hub name) and a tiny random model
    base_model: str | None = None
    tiny_model: TinyModelSpec | None = None
    trust_remote_code: bool = False
    max_length: int = Field(128, ge=8, description="tokens per (prompt, response); see encoding.encode_pairs")
    # auto: mean for encoders, last token for decoders
    pooling: Literal["auto", "last", "mean", "first"] = "auto"
    # optimisation (single process; the distributed wrapper reuses reward_loss)
    lr: float = Field(1e-4, gt=0)  # the causal-RM paper's RM learning rate
    weight_decay: float = 0.0
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=2)  # pairs per step; MMD needs >= 2 samples per bin
    grad_clip: float = 1.0
    seed: int = 0
    # train only the last N transformer layers + heads; None = all
    train_layers: int | None = Field(None, ge=0)
    # > 0: LoRA adapters instead of full fine-tuning (merged on save); "lora" ensemble
    lora_r: int = Field(0, ge=0)
    # members use lora_r or 8
    lora_alpha: int = 16
    lora_targets: list[str] | str = "all-linear"
    margin: float | None = None  # optional BT margin
    # causal RM (arXiv 2501.09620)
    # "auto": pick λ from a held-out sweep (auto_lambda.py; the sweep is saved with the model). Paper sweeps
    # {0.1, 0.3, 0.5, 1, 3, 5, 10, 100}; a fixed λ=1 over-corrected on real text with noisy labels.
    mmd_lambda: float | Literal["auto"] = "auto"
    mmd_auto_grid: list[float] = Field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    mmd_auto_holdout: float = Field(0.2, gt=0, lt=0.5)
    mmd_auto_tolerance: float = Field(0.02, ge=0)  # accuracy a λ may lose against BT on the held-out part
    mmd_mode: Literal["unconditional", "conditional"] = "conditional"
    # conditional groups: "label" (paper: observed chosen / rejected) or "estimate" (the order a 2-fold
    # cross-fitted BT reference predicts; robust to label noise, see objectives.py)
    mmd_condition: Literal["label", "estimate"] = "label"
    # μ of the counterfactual-consistency term μ·mean (r(x,y) - r(x,y_cf))²; "auto": 1.0 when the training
    # rows carry counterfactuals of mmd_attribute, else 0
    cf_weight: float | Literal["auto"] = "auto"
    # a data attribute, a computed one, or a list (combinations)
    mmd_attribute: str | list[str] = "length_tokens"
    # a data attribute (chosen_<a>/rejected_<a>, e.g. the source model) whose values are strata: Z's bins are
    # fitted and compared only within a stratum, r ⟂ Z | label, stratum. For pairs from several sources whose
    # Z differs for real reasons (one writes shorter and worse): across them Z carries quality.
    mmd_strata: str | None = None
    mmd_bins: Literal["quantile", "equal_width", "categorical"] = "quantile"
    mmd_num_bins: int = Field(10, ge=2)  # paper: 10, 20 or 30 for length
    # σ of the Gaussian kernel. Default 1.0: BT rewards are in logit units, so one logit is a natural fixed
    # scale. The median rule makes the penalty scale-invariant; applied to the very reward being trained, its
    # gradient grows as 1/scale while rewards are near 0 at init, and in the length-bias benchmark it derailed
    # training (accuracy fell below chance). It suits mmd_on="representation" better.
    mmd_bandwidth: Literal["median", "multi"] | float = 1.0
    mmd_on: Literal["reward", "representation"] = "reward"
    mmd_reduction: Literal["sum", "mean"] = "sum"
    mmd_min_bin_size: int = Field(2, ge=1)
    # HAF-RM (arXiv 2407.04185)
    haf_alpha: float = Field(0.2, ge=0)
    dpo_beta: float = Field(0.1, gt=0)
    # 0 with haf_alpha > 0 trains plain DPO on the same network (baseline)
    haf_bt_weight: float = Field(1.0, ge=0)
    # ensembles (arXiv 2310.02743, 2401.16635, 2401.12187)
    ensemble_type: Literal["independent", "linear_heads", "lora", "warm"] = "independent"
    ensemble_size: int = Field(3, ge=1)
    aggregation: Literal["mean", "lcb", "worst_case", "uncertainty_weighted"] = "mean"
    aggregation_coef: float | None = None  # β of LCB (default 1.0), λ of UWO (default 0.5)
    aggregation_ddof: int = Field(0, ge=0)
    # multi-head + ENCORE (arXiv 2503.20995)
    encore_tau: float = Field(2.0, gt=0)
    encore_levels: int = Field(10, ge=2)
    encore_low: float = 0.0
    encore_high: float = 1.0
    encore_log_base: float = 2.0

    @property
    def cf_attribute(self) -> str:
        """The counterfactual key the recipe uses: the (single) MMD attribute's name."""
        return self.mmd_attribute if isinstance(self.mmd_attribute, str) else "+".join(self.mmd_attribute)

    @model_validator(mode="after")
    def _one_backbone(self) -> RewardTrainConfig:
        if (self.base_model is None) == (self.tiny_model is None):
            raise ValueError("set exactly one of base_model (pretrained path) and tiny_model "
                             "(random tiny model)")
        return self

    @model_validator(mode="after")
    def _batch_fits_mmd(self) -> RewardTrainConfig:
        if self.data is not None and self.kind == "causal" and self.mmd_bins != "categorical" \
                and self.batch_size < 2 * self.mmd_num_bins:
            raise ValueError(f"batch_size={self.batch_size} pairs per rank leaves bins of "
                             f"mmd_num_bins={self.mmd_num_bins} mostly empty: use at least twice as many")
        return self


EXAMPLE = "rm-quickstart"
"""The built-in example `alignray rm train` runs without --config (system/presets/rm-quickstart.yaml)."""


def _flatten(data: dict, source: str) -> dict:
    """The older YAML layout kept the recipe under `model:`; its fields join the top level."""
    if not isinstance(data.get("model"), dict):
        return data
    data = dict(data)
    nested = data.pop("model")
    both = sorted(set(nested) & set(data))
    if both:
        raise ConfigError(f"invalid config ({source}): {', '.join(both)} given both at the top level "
                          "and under model: (the older layout of the same fields); use one")
    return {**data, **nested}


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> RewardTrainConfig:
    """A run's config from YAML (None: the built-in example) with dotted overrides, validated."""
    import yaml

    if path is None:
        data, source = yaml.safe_load(preset_text(EXAMPLE)), f"preset {EXAMPLE}"
    else:
        data, source = read_yaml(path), str(path)
    data = _flatten(apply_overrides(data, overrides or []), source)
    try:
        cfg = RewardTrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, RewardTrainConfig)) from None
    if cfg.data is None:
        raise ConfigError(f"invalid config ({source}):\n  data: a run needs preference pairs "
                          "(a .jsonl / .parquet file, a hub dataset or builtin:restaurants)")
    return cfg
