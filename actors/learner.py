"""LearnerWorker: one DeepSpeed rank owning the policy (trained), the frozen reference and, for PPO, the critic.

Every rank reads the step's scored batches zero-copy from the object store, keeps whole prompt groups of its own
shard, and runs the same number of micro-batches as every other rank (ZeRO collectives need equal call counts).
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from alignray.config import Config
from alignray.experience import (
    SequenceBatch,
    advantages_for,
    critic_loss,
    micro_batch_loss,
    response_logits,
    response_logprobs,
    response_values,
    sequences_from_batch,
)
from alignray.models import load_critic, load_policy, load_tokenizer, save_hf
from alignray.schema import check_batch, concat_batches
from alignray.weights import WeightUpdate, pack_state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_rank(torch_threads: int, num_gpus: float) -> bool:
    """Per-rank process setup shared by the RL and reward-model learners; returns whether this rank uses a GPU."""
    torch.set_num_threads(torch_threads)
    use_gpu = num_gpus > 0 and torch.cuda.is_available()
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return use_gpu


def rank_address() -> tuple[str, int]:
    """Where rank 0 hosts the process-group rendezvous: this node's IP and a free port."""
    return ray.util.get_node_ip_address(), free_port()


def init_process_group(rank: int, world: int, master_addr: str, master_port: int, backend: str,
                       use_gpu: bool) -> None:
    """The env DeepSpeed expects (it otherwise tries MPI discovery), then its process group (gloo on CPU)."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), LOCAL_RANK="0",
                      WORLD_SIZE=str(world))
    import deepspeed

    if backend == "auto":
        backend = "nccl" if use_gpu else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def ds_config(cfg: Config, world_size: int) -> dict:
    lc = cfg.learner
    return {
        "train_micro_batch_size_per_gpu": lc.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": lc.micro_batch_size * world_size,
        "gradient_clipping": lc.grad_clip,
        "zero_optimization": {"stage": lc.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
    }


def shard_rows(prompt_ids: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rows whose prompt group belongs to this rank (groups dealt round-robin in order of first appearance)."""
    _, first, inverse = np.unique(prompt_ids, return_index=True, return_inverse=True)
    group_order = np.argsort(np.argsort(first))  # rank of each group by first appearance
    return np.flatnonzero(group_order[inverse] % world == rank)


@ray.remote
class LearnerWorker:
    def __init__(self, cfg_dict: dict, rank: int, world_size: int):
        self.cfg = Config.model_validate(cfg_dict)
        self.rank, self.world = rank, world_size
        self.use_gpu = prepare_rank(self.cfg.learner.torch_threads, self.cfg.learner.num_gpus)
        self._weight_transport = None

    def pid(self) -> int:
        return os.getpid()

    def address(self) -> tuple[str, int]:
        return rank_address()

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group and build the DeepSpeed engines; returns the parameter count."""
        init_process_group(self.rank, self.world, master_addr, master_port, self.cfg.learner.backend, self.use_gpu)
        import deepspeed

        self.device = torch.device("cuda", torch.cuda.current_device()) if self.use_gpu else torch.device("cpu")
        tok = load_tokenizer(self.cfg.model)
        self.pad_id = tok.pad_token_id
        self.tokenizer = tok
        lc = self.cfg.learner
        policy = load_policy(self.cfg.model, len(tok))
        self.reference = load_policy(self.cfg.model, len(tok)).to(self.device).eval().requires_grad_(False)
        optim = torch.optim.AdamW(policy.parameters(), lr=lc.lr, weight_decay=lc.weight_decay)
        self.policy, *_ = deepspeed.initialize(model=policy, optimizer=optim, config=ds_config(self.cfg, self.world))
        self.critic = None
        if self.cfg.algo.name == "ppo":
            critic = load_critic(self.cfg.model, len(tok))
            c_optim = torch.optim.AdamW(critic.parameters(), lr=lc.critic_lr, weight_decay=lc.weight_decay)
            self.critic, *_ = deepspeed.initialize(model=critic, optimizer=c_optim,
                                                   config=ds_config(self.cfg, self.world))
        self.step = 0
        return sum(p.numel() for p in policy.parameters())

    # ---- one training step -------------------------------------------------------------------------------------
    def _micro_batches(self, rows: np.ndarray, all_rows: list[np.ndarray]) -> list[np.ndarray]:
        """Split this rank's rows into the same number of micro-batches every rank uses."""
        mb = self.cfg.learner.micro_batch_size
        count = max(1, max(math.ceil(len(r) / mb) for r in all_rows))
        return list(np.array_split(rows, count))

    def _forward_each(self, fn, seq: SequenceBatch, chunks: list[np.ndarray]) -> torch.Tensor:
        """Run `fn(sub_batch)` on every micro-batch (a dummy row for an empty one, so ZeRO-3 ranks stay in step)."""
        outs = []
        for chunk in chunks:
            idx = torch.as_tensor(chunk if len(chunk) else np.array([0]), dtype=torch.long)
            out = fn(self._to_device(seq.select(idx)))
            outs.append(out[: len(chunk)].cpu())
        return torch.cat(outs) if outs else torch.zeros(0)

    def _to_device(self, seq: SequenceBatch) -> SequenceBatch:
        if self.device.type == "cpu":
            return seq
        return SequenceBatch(*(getattr(seq, f).to(self.device) for f in seq.__dataclass_fields__))

    def train_step(self, scored_refs: list) -> dict:
        """Train on the step's scored batches (ObjectRefs, read zero-copy); returns rank-averaged scalars."""
        t0 = time.perf_counter()
        batch = concat_batches([check_batch(b, "scored", "learner input") for b in ray.get(scored_refs)])
        prompt_ids = batch.column("prompt_id").to_numpy()
        all_rows = [shard_rows(prompt_ids, r, self.world) for r in range(self.world)]
        rows = all_rows[self.rank]
        local = sequences_from_batch(batch.take(pa.array(rows, type=pa.int64())), self.pad_id) if len(rows) else \
            sequences_from_batch(batch.slice(0, 1), self.pad_id)
        chunks = self._micro_batches(np.arange(len(rows)), all_rows)
        algo, temp = self.cfg.algo, self.cfg.rollout.temperature
        norm_len = self.cfg.rollout.max_new_tokens
        with torch.no_grad():
            old_logp = self._forward_each(lambda s: response_logprobs(response_logits(self.policy, s), s, temp),
                                          local, chunks)
            ref_logp = self._forward_each(lambda s: response_logprobs(response_logits(self.reference, s), s, temp),
                                          local, chunks)
            values = self._forward_each(lambda s: response_values(self.critic, s), local, chunks) \
                if self.critic is not None else None
        advantages, returns = advantages_for(local, old_logp, ref_logp, values, algo)
        total_tokens = float(local.response_mask.sum()) if len(rows) else 0.0
        stats: dict[str, float] = {}
        for _ in range(algo.ppo_epochs):
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                empty = len(chunk) == 0
                idx = torch.as_tensor(chunk if not empty else np.array([0]), dtype=torch.long)
                mb = self._to_device(local.select(idx))
                share = 0.0 if empty or total_tokens == 0 else float(mb.response_mask.sum()) / total_tokens
                self.policy.set_gradient_accumulation_boundary(last)
                loss, mb_stats = micro_batch_loss(self.policy, mb, old_logp[idx].to(self.device),
                                                  ref_logp[idx].to(self.device), advantages[idx].to(self.device),
                                                  algo, temp, norm_len)
                self.policy.backward(loss * share)
                for k, v in mb_stats.items():
                    stats[k] = stats.get(k, 0.0) + v * share / algo.ppo_epochs
                if self.critic is not None:
                    self.critic.set_gradient_accumulation_boundary(last)
                    v_loss = critic_loss(self.critic, mb, values[idx].to(self.device), returns[idx].to(self.device),
                                         algo)
                    self.critic.backward(v_loss * share)
                    stats["loss/value"] = stats.get("loss/value", 0.0) + float(v_loss) * share / algo.ppo_epochs
            self.policy.step()
            if self.critic is not None:
                self.critic.step()
        self.step += 1
        grad_norm = self.policy.get_global_grad_norm()
        stats["grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
        stats["logprob_mismatch"] = float(((old_logp - local.rollout_logprobs).abs() * local.response_mask).sum()
                                          / max(total_tokens, 1.0))
        stats["timing/learner_busy_s"] = time.perf_counter() - t0
        return self._mean_over_ranks(stats, weight=total_tokens)

    def _mean_over_ranks(self, stats: dict[str, float], weight: float) -> dict[str, float]:
        """Token-weighted mean of each scalar over ranks (grad_norm is already global)."""
        import torch.distributed as dist

        keys = sorted(k for k in stats if k != "grad_norm")
        vec = torch.tensor([stats[k] * weight for k in keys] + [weight], dtype=torch.float64)
        dist.all_reduce(vec)
        total = max(float(vec[-1]), 1e-12)
        out = {k: float(vec[i]) / total for i, k in enumerate(keys)}
        out["grad_norm"] = stats["grad_norm"]
        return out

    # ---- weights out -------------------------------------------------------------------------------------------
    def _full_state(self) -> dict[str, torch.Tensor] | None:
        """Full parameters on rank 0 (gathered across ranks under ZeRO-3; every rank must call this)."""
        params = list(self.policy.module.named_parameters())
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
                state = {n: p.detach().cpu().clone() for n, p in params} if self.rank == 0 else None
            return state
        return {n: p.detach().cpu() for n, p in params} if self.rank == 0 else None

    def weight_update(self, version: int) -> WeightUpdate | None:
        """Pack the policy into buckets and publish them once through the configured transport (object store: one
        ray.put per bucket); rank 0 returns the handles (ObjectRefs by default), the other ranks None."""
        state = self._full_state()
        if state is None:
            return None
        from alignray.transports import make_transport

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

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self, step_dir: str, hf: bool = True) -> None:
        """DeepSpeed state (model, optimizer, RNG) per rank under step_dir/policy, and (`hf`) an HF folder
        step_dir/hf; a snapshot for in-run recovery skips the HF export."""
        client = {"step": self.step, "torch_rng": torch.get_rng_state()}
        self.policy.save_checkpoint(step_dir, tag="policy", client_state=client)
        if self.critic is not None:
            self.critic.save_checkpoint(step_dir, tag="critic")
        state = self._full_state() if hf else None
        if state is not None:
            save_hf(self.policy.module, self.tokenizer, Path(step_dir) / "hf", state_dict=state)

    def load(self, step_dir: str) -> int:
        _, client = self.policy.load_checkpoint(step_dir, tag="policy", load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
        if self.critic is not None:
            self.critic.load_checkpoint(step_dir, tag="critic")
        self.step = int(client["step"])
        torch.set_rng_state(client["torch_rng"])
        return self.step
