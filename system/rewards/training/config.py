"""RewardTrainConfig: every knob of reward-model training, with its documented default."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .backbones import TinyModelSpec


class RewardTrainConfig(BaseModel):
    """kind picks the loss: bt = Bradley-Terry; causal = BT + λ·Σ MMD² over bins of a spurious attribute;
    haf = BT(reward head) + α·DPO_β(LM head); multihead = MSE of K rule heads on ratings, then ENCORE weights;
    ensemble = k members (independent / linear heads on one trunk / LoRA members / WARM weight average)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bt", "causal", "haf", "multihead", "ensemble"] = "bt"
    # backbone: exactly one of a pretrained path (or hub name) and a tiny random model
    base_model: str | None = None
    tiny_model: TinyModelSpec | None = None
    trust_remote_code: bool = False
    max_length: int = Field(128, ge=8, description="tokens per (prompt, response); see encoding.encode_pairs")
    pooling: Literal["auto", "last", "mean", "first"] = "auto"  # auto: mean for encoders, last token for decoders
    # optimisation (single process; the distributed wrapper reuses reward_loss)
    lr: float = Field(1e-4, gt=0)  # the causal-RM paper's RM learning rate
    weight_decay: float = 0.0
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(16, ge=2)  # pairs per step; MMD needs >= 2 samples per bin
    grad_clip: float = 1.0
    seed: int = 0
    train_layers: int | None = Field(None, ge=0)  # train only the last N transformer layers + heads; None = all
    lora_r: int = Field(0, ge=0)  # > 0: LoRA adapters instead of full fine-tuning (merged on save); "lora" ensemble
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
    # conditional groups: "label" (paper: observed chosen / rejected) or "estimate" (the order a 2-fold cross-fitted
    # BT reference predicts; robust to label noise, see objectives.py)
    mmd_condition: Literal["label", "estimate"] = "label"
    # μ of the counterfactual-consistency term μ·mean (r(x,y) - r(x,y_cf))²; "auto": 1.0 when the training rows carry
    # counterfactuals of mmd_attribute, else 0
    cf_weight: float | Literal["auto"] = "auto"
    mmd_attribute: str | list[str] = "length_tokens"  # a data attribute, a computed one, or a list (combinations)
    mmd_bins: Literal["quantile", "equal_width", "categorical"] = "quantile"
    mmd_num_bins: int = Field(10, ge=2)  # paper: 10, 20 or 30 for length
    # σ of the Gaussian kernel. Default 1.0: BT rewards are in logit units, so one logit is a natural fixed scale. The
    # median rule makes the penalty scale-invariant; applied to the very reward being trained, its gradient grows as
    # 1/scale while rewards are near 0 at init, and in the length-bias benchmark it derailed training (accuracy fell
    # below chance). It suits mmd_on="representation" better.
    mmd_bandwidth: Literal["median", "multi"] | float = 1.0
    mmd_on: Literal["reward", "representation"] = "reward"
    mmd_reduction: Literal["sum", "mean"] = "sum"
    mmd_min_bin_size: int = Field(2, ge=1)
    # HAF-RM (arXiv 2407.04185)
    haf_alpha: float = Field(0.2, ge=0)
    dpo_beta: float = Field(0.1, gt=0)
    haf_bt_weight: float = Field(1.0, ge=0)  # 0 with haf_alpha > 0 trains plain DPO on the same network (baseline)
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

    @model_validator(mode="after")
    def _one_backbone(self) -> RewardTrainConfig:
        if (self.base_model is None) == (self.tiny_model is None):
            raise ValueError("set exactly one of base_model (pretrained path) and tiny_model (random tiny model)")
        return self
