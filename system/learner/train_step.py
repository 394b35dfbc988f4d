"""One learner step on one rank: the step's batch → mini-batches → this rank's shard → micro-batches.

No Ray: the LearnerWorker (and the sharding test) call `LearnerStep.run` with DeepSpeed engines on an
initialised process group. Every rank reads the whole scored batch, so the plan (which rows go to which rank,
mini-batch and micro-batch) is computed identically everywhere; prompt groups are never split. The work of a
step:

    forwards (no grad)   π_old only if `Objective.needs_old_forward`, π_ref only if `uses_reference`,
                         V for PPO
    one all-reduce       counts of every mini-batch + whitening statistics → advantages of the whole batch
    per mini-batch       M micro-batch backwards (loss × world: DeepSpeed averages gradients over ranks),
                         one step
    one all-reduce       the logged statistics
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from alignray.algorithms.overlong import overlong_penalty
from alignray.config import Config
from alignray.devices import mfu, peak_flops
from alignray.learner.batch import (
    SequenceBatch,
    advantages_for,
    forward_logprobs,
    response_values,
    sequences_from_batch,
)
from alignray.learner.objective import Objective, Tally, batch_counts
from alignray.learner.packing import Packing, auto_row_tokens, token_chunks


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks (a copy); the identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = x.clone()
    dist.all_reduce(out)
    return out


def group_order(prompt_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Index of each row's prompt group in order of first appearance, and the number of groups."""
    _, first, inverse = np.unique(prompt_ids, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse], len(first)


def plan_step(prompt_ids: np.ndarray, rank: int, world: int, mini_batches: int, micro_batch_size: int,
              lengths: np.ndarray | None = None, micro_batch_tokens: int | None = None
              ) -> list[list[np.ndarray]]:
    """For each mini-batch, this rank's micro-batches as row indices of the step's batch.

    Groups split into `mini_batches` contiguous chunks; inside a chunk they are dealt to ranks round-robin;
    every rank gets the same number of micro-batches per mini-batch (ZeRO collectives need equal call counts),
    some empty. Micro-batches hold `micro_batch_size` rows, or with `micro_batch_tokens` (and every row's
    token count in `lengths`) consecutive rows of at most that many tokens (`token_chunks`). Every rank
    computes every rank's shard, so the plan is the same everywhere.
    """
    if micro_batch_tokens is not None and lengths is None:
        raise ValueError("plan_step: micro_batch_tokens needs the rows' lengths")
    group, n_groups = group_order(prompt_ids)
    plan = []
    for chunk in np.array_split(np.arange(n_groups), min(mini_batches, max(n_groups, 1))):
        pos = np.full(n_groups, -1)
        pos[chunk] = np.arange(len(chunk))
        in_chunk = pos[group]
        shards = [np.flatnonzero((in_chunk >= 0) & (in_chunk % world == r)) for r in range(world)]
        if micro_batch_tokens is not None:
            split = [[s[c] for c in token_chunks(lengths[s], micro_batch_tokens)] for s in shards]
            count = max(1, max(len(parts) for parts in split))
            mine = split[rank]
            plan.append(mine + [np.array([], dtype=np.int64)] * (count - len(mine)))
            continue
        count = max(1, max(math.ceil(len(s) / micro_batch_size) for s in shards))
        plan.append(list(np.array_split(shards[rank], count)))
    return plan


class LearnerStep:
    """Runs steps for one rank with the engines it owns (policy and critic DeepSpeed engines, frozen
    reference)."""

    def __init__(self, cfg: Config, policy, reference, critic, rank: int, world: int, pad_id: int,
                 device: torch.device):
        self.cfg, self.policy, self.reference, self.critic = cfg, policy, reference, critic
        self.rank, self.world, self.pad_id, self.device = rank, world, pad_id, device
        module = getattr(policy, "module", policy)
        row_tokens = cfg.learner.pack_row_tokens
        if row_tokens == "auto":
            row_tokens = auto_row_tokens(getattr(getattr(module, "config", None), "hidden_size", 1024))
        self.packing = Packing(cfg.model.attn_implementation, row_tokens) if cfg.learner.packing else None
        self.params = sum(getattr(p, "ds_numel", 0) or p.numel() for p in module.parameters())
        self.trainable = sum(getattr(p, "ds_numel", 0) or p.numel() for p in module.parameters()
                             if p.requires_grad)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.peak_flops = cfg.learner.peak_flops or peak_flops(name, cfg.model.dtype)

    def _to_device(self, seq: SequenceBatch) -> SequenceBatch:
        if self.device.type == "cpu":
            return seq
        return SequenceBatch(*(getattr(seq, f).to(self.device) for f in seq.__dataclass_fields__))

    def _select(self, seq: SequenceBatch, idx: np.ndarray) -> tuple[SequenceBatch, torch.Tensor, bool]:
        """Rows `idx` of this rank's batch; an empty micro-batch runs one masked dummy row (ZeRO-3 ranks stay
        in step)."""
        empty = len(idx) == 0
        rows = torch.as_tensor(idx if not empty else np.array([0]), dtype=torch.long)
        mb = seq.select(rows)
        if empty:
            mb.response_mask = torch.zeros_like(mb.response_mask)
        return self._to_device(mb), rows, empty

    @torch.no_grad()
    def _forward_all(self, fn: Callable[[SequenceBatch], torch.Tensor], seq: SequenceBatch,
                     chunks: list[np.ndarray]) -> torch.Tensor:
        out = torch.zeros_like(seq.response_mask)
        for idx in chunks:
            mb, rows, empty = self._select(seq, idx)
            value = fn(mb).cpu()
            if not empty:
                out[rows] = value
        return out

    def _micro_step(self, obj: Objective, local: SequenceBatch, idx: np.ndarray, boundary: bool,
                    old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, values: torch.Tensor | None,
                    advantages: torch.Tensor, returns: torch.Tensor | None, counts: torch.Tensor,
                    tally: Tally) -> None:
        """Forward and backward of one micro-batch: its share of the (mini-)batch loss whose counts are
        `counts`."""
        mb, rows, empty = self._select(local, idx)

        def part(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[rows].to(self.device)

        self.policy.set_gradient_accumulation_boundary(boundary)
        logp, entropy = forward_logprobs(self.policy, mb, obj.temperature, entropy=True,
                                         entropy_grad=bool(obj.algo.entropy_coef), packing=self.packing)
        loss = obj.policy_loss(logp, entropy, part(old_logp), part(ref_logp), mb.rollout_logprobs,
                               part(advantages), mb.response_mask, counts, tally)
        loss = loss * 0.0 if empty else loss
        tally.add("loss/policy", float(loss.detach()), 0.0)
        # DeepSpeed's all-reduce averages over ranks: × world makes it Σ
        self.policy.backward(loss * self.world)
        if self.critic is not None:
            self.critic.set_gradient_accumulation_boundary(boundary)
            v_loss = obj.value_loss(response_values(self.critic, mb, self.packing), part(values),
                                    part(returns), mb.response_mask, counts)
            v_loss = v_loss * 0.0 if empty else v_loss
            tally.add("loss/value", float(v_loss.detach()), 0.0)
            self.critic.backward(v_loss * self.world)

    def _throughput(self, seconds: float, tokens: float, epochs: int) -> dict[str, float]:
        """`learner/tokens_per_s` = the step's tokens (prompt + response, all ranks) / the step's seconds (the
        mean over ranks); `learner/mfu` = mfu(policy params, tokens × ppo_epochs, seconds, peak, ranks, the
        trainable params: fewer with LoRA), only where the peak is known (`learner.peak_flops` or a known GPU;
        never on CPU)."""
        out = {"learner/tokens_per_s": tokens / seconds if seconds > 0 else 0.0}
        if self.peak_flops:
            out["learner/mfu"] = mfu(self.params, tokens * epochs, seconds, self.peak_flops, self.world,
                                     self.trainable)
        return out

    def run(self, batch: pa.RecordBatch, version: int,
            before_optimizer_step: Callable[[int], None] | None = None) -> dict[str, float]:
        """Train on the step's whole scored batch; `version` is the policy version these weights are
        (on-policy when every row was sampled by it). `before_optimizer_step(k)` sees the reduced gradients of
        mini-batch k."""
        t0 = time.perf_counter()
        cfg, algo = self.cfg, self.cfg.algo
        obj = Objective(algo, cfg.rollout.temperature, cfg.rollout.policy_tokens)  # episodes: all their turns
        prompt_ids = batch.column("prompt_id").to_numpy()
        lengths = sum(np.diff(np.asarray(batch.column(c).offsets))
                      for c in ("prompt_tokens", "response_tokens"))  # tokens per row
        plan = plan_step(prompt_ids, self.rank, self.world, algo.mini_batches, cfg.learner.micro_batch_size,
                         lengths, cfg.learner.micro_batch_tokens)
        mine = np.concatenate([idx for micro in plan for idx in micro])
        # This rank's rows in plan order; micro-batches become index ranges into them.
        local = sequences_from_batch(batch.take(pa.array(mine if len(mine) else [0], type=pa.int64())),
                                     self.pad_id, algo.overlong, cfg.rollout.episode_tokens)
        if not len(mine):
            local.response_mask = torch.zeros_like(local.response_mask)
        bounds = np.cumsum([0] + [len(idx) for micro in plan for idx in micro])
        flat = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
        plan_local, k = [], 0
        for micro in plan:
            plan_local.append(flat[k:k + len(micro)])
            k += len(micro)

        on_policy = bool((batch.column("policy_version").to_numpy() == version).all())
        temp = cfg.rollout.temperature

        def logp_of(model) -> Callable[[SequenceBatch], torch.Tensor]:
            return lambda s: forward_logprobs(model, s, temp, packing=self.packing)[0]

        old_forward = obj.needs_old_forward(on_policy)
        old_logp = self._forward_all(logp_of(self.policy), local, flat) if old_forward else None
        if algo.old_logprobs == "rollout":
            old_logp = local.rollout_logprobs * local.response_mask
        ref_logp = self._forward_all(logp_of(self.reference), local, flat) if obj.uses_reference else None
        values = self._forward_all(lambda s: response_values(self.critic, s, self.packing), local, flat) \
            if self.critic is not None else None
        t_forward = time.perf_counter()

        rows_of = [np.concatenate(m).astype(np.int64) for m in plan_local]
        counts = all_reduce_sum(torch.stack([batch_counts(local.response_mask[i], local.loss_rows[i])
                                             for i in rows_of]))
        advantages, returns = advantages_for(local, old_logp, ref_logp, values, algo, reduce=all_reduce_sum)
        tally = Tally()
        if algo.overlong.mode == "penalty":  # the mean R_len that sequences_from_batch added to the rewards
            penalty = overlong_penalty(local.response_lengths[:len(mine)], cfg.rollout.episode_tokens,
                                       algo.overlong.buffer)
            tally.add("batch/overlong_penalty", float(penalty.sum()), float(len(mine)))
        optimizer_steps = 0
        for _ in range(algo.ppo_epochs):
            for k, micro in enumerate(plan_local):
                for i, idx in enumerate(micro):
                    self._micro_step(obj, local, idx, i == len(micro) - 1, old_logp, ref_logp, values,
                                     advantages, returns, counts[k], tally)
                # Each mini-batch's loss sums over ranks; the denominators make the logged loss a mean per
                # update.
                tally.add("loss/policy", 0.0, 1.0 / self.world)
                if self.critic is not None:
                    tally.add("loss/value", 0.0, 1.0 / self.world)
                if before_optimizer_step is not None:
                    before_optimizer_step(k)
                self.policy.step()
                if self.critic is not None:
                    self.critic.step()
                optimizer_steps += 1
        tally.add("learner/tokens", float(lengths[mine].sum()) if len(mine) else 0.0, 1.0 / self.world)
        tally.add("learner/busy_s", time.perf_counter() - t0, 1.0)  # → the mean over ranks
        stats = tally.ratios(all_reduce_sum)
        stats.update(self._throughput(stats.pop("learner/busy_s"), stats["learner/tokens"], algo.ppo_epochs))
        grad_norm = self.policy.get_global_grad_norm()
        stats["grad_norm"] = float(grad_norm) if grad_norm is not None else math.nan
        stats["learner/optimizer_steps"] = float(optimizer_steps)
        stats["learner/lr"] = float(self.policy.get_lr()[0])  # the rate the step's updates were taken with
        stats["learner/old_forward"] = float(old_forward)
        stats["learner/ref_forward"] = float(ref_logp is not None)
        stats["timing/learner_forward_s"] = t_forward - t0
        stats["timing/learner_busy_s"] = time.perf_counter() - t0
        return stats
