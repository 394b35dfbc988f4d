"""LearnerWorker: one DeepSpeed rank owning the policy (trained; with `model.lora` its adapters only), the
frozen reference (with LoRA: the policy with its adapters off, no copy) and, for PPO, the critic.

Every rank reads the step's scored batches zero-copy from the object store;
`alignray.learner.train_step.LearnerStep` plans mini-batches, this rank's shard of whole prompt groups and its
micro-batches, and optimises the sharding-invariant objective of `alignray.learner.objective`.

torch, transformers and DeepSpeed are imported in the rank, not at module level: the driver imports this
module to create the actors, and must not pay for them on its critical path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import ray

from alignray.actors.ranks import (
    deepspeed_config,
    init_process_group,
    prepare_rank,
    rank_address,
)
from alignray.actors.watch import WATCHED, Watched
from alignray.config import Config
from alignray.devices import actor_device

if TYPE_CHECKING:
    import torch

    from alignray.rollout.weights import WeightUpdate


STAGES = {"import_deepspeed_s": "imported DeepSpeed", "process_group_s": "process group joined",
          "models_s": "models built", "deepspeed_initialize_s": "DeepSpeed ready",
          "colocated_rollout_s": "colocated engine and scorers built"}
"""setup's timed laps → the start-up lines the driver prints."""


def ds_config(cfg: Config, world_size: int) -> dict:
    lc = cfg.learner
    return deepspeed_config(lc.micro_batch_size, world_size, lc.grad_clip, lc.zero_stage, cfg.model.dtype)


@ray.remote(**WATCHED)
class LearnerWorker(Watched):
    def __init__(self, cfg_dict: dict, rank: int, world_size: int):
        import psutil

        t0 = time.perf_counter()
        self._started = {"process_created": psutil.Process().create_time(), "init_called": time.time()}
        self.cfg = Config.model_validate(cfg_dict)
        self.rank, self.world = rank, world_size
        self.use_gpu = prepare_rank(self.cfg.learner.torch_threads, self.cfg.learner.num_gpus)
        self._weight_transport = None
        self._init_s = time.perf_counter() - t0

    def device(self) -> str:
        """Where this rank trains: "cpu", or "cuda:0" (the GPU `learner.num_gpus` reserved)."""
        return actor_device(self.cfg.learner.num_gpus, "learner.num_gpus")

    def address(self) -> tuple[str, int]:
        return rank_address()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the DeepSpeed engines; returns the parameter count. Where the time
        goes is kept for `startup_timing` (benchmarks/startup.py)."""
        clock, timing = time.perf_counter(), {}

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timing[name] = now - clock
            clock = now
            if name != "colocated_rollout_s" or self.cfg.train.colocate:
                self.stage(STAGES[name] + (f" on {self.device}" if name == "models_s" else ""))

        self.begin_stages()

        import deepspeed
        import torch

        from alignray.learner.objective import Objective
        from alignray.learner.train_step import LearnerStep
        from alignray.lora import Reference, apply_lora, lora_targets, param_counts
        from alignray.models import load_critic, load_policy, load_tokenizer, optimizer_for

        lap("import_deepspeed_s")
        actor_device(self.cfg.learner.num_gpus, "learner.num_gpus")  # a GPU rank without CUDA: one clean line
        init_process_group(self.rank, self.world, master_addr, master_port, self.cfg.learner.backend,
                           self.use_gpu)
        lap("process_group_s")
        self.device = torch.device("cuda",
                                   torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")
        tok = load_tokenizer(self.cfg.model)
        self.pad_id = tok.pad_token_id
        self.tokenizer = tok
        lc = self.cfg.learner
        policy = load_policy(self.cfg.model, len(tok))
        # model.lora: adapters injected into `policy` (trained as it is, a plain transformers forward)
        self.peft = apply_lora(policy, self.cfg.model) if self.cfg.model.lora is not None else None
        self.lora_targets = lora_targets(policy) if self.peft is not None else None
        objective = Objective(self.cfg.algo, self.cfg.rollout.temperature, self.cfg.rollout.max_new_tokens)
        # no KL term and no KL metric: no reference model at all; LoRA: the policy with its adapters off
        self.reference = load_policy(self.cfg.model, len(tok)).to(self.device).eval().requires_grad_(False) \
            if objective.uses_reference and self.peft is None else None
        critic = load_critic(self.cfg.model, len(tok)) if objective.uses_critic else None
        lap("models_s")
        optim = optimizer_for(policy, lc.lr, lc.weight_decay)  # LoRA: the adapters only
        self.policy, *_ = deepspeed.initialize(model=policy, optimizer=optim, config=ds_config(self.cfg,
                                                                                               self.world))
        if self.peft is not None and objective.uses_reference:
            self.reference = Reference(self.peft, self.policy.module)
        self.param_counts = param_counts(self.policy.module)
        self.critic = None
        if critic is not None:
            c_optim = torch.optim.AdamW(critic.parameters(), lr=lc.critic_lr, weight_decay=lc.weight_decay)
            self.critic, *_ = deepspeed.initialize(model=critic, optimizer=c_optim,
                                                   config=ds_config(self.cfg, self.world))
        lap("deepspeed_initialize_s")
        if self.cfg.train.colocate:
            self._colocate(tok)
        lap("colocated_rollout_s")
        self.startup = timing
        self.step = 0
        self.runner = LearnerStep(self.cfg, self.policy, self.reference, self.critic, self.rank, self.world,
                                  self.pad_id, self.device)
        return sum(p.numel() for p in policy.parameters())

    def _colocate(self, tok) -> None:
        """train.colocate: a sampling engine on the module this rank trains (ZeRO ≤ 2: whole weights on every
        rank, updated in place by each optimizer step) and the reward scorers."""
        from alignray.actors.reward import build_reward_scorers
        from alignray.rollout.hf import HFEngine

        self.engine = HFEngine(self.policy.module, tok.pad_token_id, tok.eos_token_id)
        self.scorers = build_reward_scorers(self.cfg.reward, self.cfg.model.trust_remote_code,
                                            own_process=False, device=str(self.device),
                                            env_weight=self.cfg.rollout.env_reward_weight)

    def startup_timing(self) -> dict[str, float]:
        """Seconds of each part of `setup` on this rank; wall-clock times (epoch s) at which the worker
        process was created and `__init__` was called, so a caller can place process start and imports on its
        own clock."""
        return {**self.startup, "actor_init_s": self._init_s, **self._started}

    # ---- one training step ---------------------------------------------------------------------------------
    def train_step(self, scored_refs: list) -> dict:
        """Train on the step's scored batches (ObjectRefs, read zero-copy); returns the step's global
        statistics (the same on every rank)."""
        from alignray.algorithms.dynamic_sampling import informative_rows
        from alignray.schema import check_batch, concat_batches

        batch = concat_batches([check_batch(b, "scored", "learner input") for b in ray.get(scored_refs)])
        batch = informative_rows(batch)  # algo.dynamic_sampling: rows marked `filtered` are never trained on
        # no informative group within algo.dynamic_sampling_max_rounds: the step makes no update
        stats = (self.runner.run(batch, version=self.step) if batch.num_rows
                 else {"learner/optimizer_steps": 0.0})
        self.step += 1
        stats["learner/trainable_params"], stats["learner/total_params"] = map(float, self.param_counts)
        return stats

    # ---- colocated rollout and reward (train.colocate) -----------------------------------------------------
    @ray.method(num_returns=2)
    def generate(self, prompts, seed: int) -> tuple:
        """As `RolloutWorker.generate`, with the live weights: stamped with this rank's step (their
        version)."""
        from alignray.rollout.engine import generate_rollout

        return generate_rollout(self.engine, self.tokenizer, self.cfg.rollout, prompts, seed, self.step,
                                f"learner rank {self.rank}", self.cfg.reward.on_error)

    @ray.method(num_returns=2)
    def score(self, rollout) -> tuple:
        from alignray.rewards.scorers import score_batch

        return score_batch(rollout, self.scorers, self.cfg.reward.on_error, self.cfg.algo.dynamic_sampling)

    def update_weights(self, update: WeightUpdate) -> dict:
        """Nothing moves: the engine samples with the module this rank trains."""
        return {"version": self.step, "tensors": 0, "bytes": 0, "seconds": 0.0}

    # ---- weights out ---------------------------------------------------------------------------------------
    def _full_state(self) -> dict[str, torch.Tensor] | None:
        """Full parameters on rank 0 (gathered across ranks under ZeRO-3; every rank must call this)."""
        params = list(self.policy.module.named_parameters())
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
                state = {n: p.detach().cpu().clone() for n, p in params} if self.rank == 0 else None
            return state
        return {n: p.detach().cpu() for n, p in params} if self.rank == 0 else None

    def _merged(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the engines and the HF export get: `state` itself, or with LoRA the merged model under the
        base model's names (W + alpha/r · B A per adapted layer, new tensors; the training module is
        untouched)."""
        from alignray.lora import merged_state

        return state if self.lora_targets is None else merged_state(state, self.lora_targets)

    def weight_update(self, version: int) -> WeightUpdate | None:
        """Pack the policy into buckets and publish them once through the configured transport (object store:
        one ray.put per bucket); rank 0 returns the handles (ObjectRefs by default), the other ranks None.
        Colocated (train.colocate), nothing is published: every rank's engine already samples with its own
        weights."""
        from alignray.rollout.weights import WeightUpdate, pack_state

        if self.cfg.train.colocate:
            return WeightUpdate(version=version, transport="in_process") if self.rank == 0 else None
        state = self._full_state()
        if state is None:
            return None
        state = self._merged(state)
        from alignray.rollout.transports import make_transport

        buckets = pack_state(state.items(), self.cfg.learner.weight_bucket_mb)
        transport = self._weight_transport
        if transport is None:  # kept: a CUDA IPC sender keeps its buffers alive, an NCCL sender its group
            v = self.cfg.rollout.vllm
            name = v.weight_transport if self.cfg.rollout.engine == "vllm" else "object_store"
            transport = self._weight_transport = make_transport(
                name, put=ray.put, world_size=1 + self.cfg.rollout.num_workers * v.tensor_parallel_size,
                host=ray.util.get_node_ip_address(), port=v.nccl_port)
        return WeightUpdate(version=version, handles=transport.publish(buckets), transport=transport.name,
                            num_tensors=len(state), nbytes=sum(b.nbytes for b in buckets))

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def save(self, step_dir: str, hf: bool = True) -> None:
        """DeepSpeed state (model, optimizer, RNG) per rank under step_dir/policy, and (`hf`) an HF folder
        step_dir/hf; a snapshot for in-run recovery skips the HF export. With LoRA the DeepSpeed state holds
        the adapters and their optimizer state only (the frozen base is rebuilt from `model.*`), `hf` is the
        merged model and step_dir/adapter the adapters in peft's format (`PeftModel.from_pretrained`)."""
        import torch

        from alignray.models import save_hf

        client = {"step": self.step, "torch_rng": torch.get_rng_state()}
        self.policy.save_checkpoint(step_dir, tag="policy", client_state=client,
                                    exclude_frozen_parameters=self.peft is not None)
        if self.critic is not None:
            self.critic.save_checkpoint(step_dir, tag="critic")
        state = self._full_state() if hf else None
        if state is not None:
            if self.peft is not None:
                # the frozen LM head and embeddings are the base's: not copied next to the adapters
                self.peft.save_pretrained(Path(step_dir) / "adapter", save_embedding_layers=False)
            save_hf(self.policy.module, self.tokenizer, Path(step_dir) / "hf", state_dict=self._merged(state))

    def load(self, step_dir: str) -> int:
        import torch

        # LoRA: the checkpoint holds the adapters only; the frozen base is already the rebuilt one
        _, client = self.policy.load_checkpoint(step_dir, tag="policy", load_optimizer_states=True,
                                                load_lr_scheduler_states=True,
                                                load_module_strict=self.peft is None)
        if self.critic is not None:
            self.critic.load_checkpoint(step_dir, tag="critic")
        self.step = int(client["step"])
        torch.set_rng_state(client["torch_rng"])
        return self.step
