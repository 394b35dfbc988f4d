"""The driver: schedules prompts → rollouts → rewards → learner → weights, by reference; never touches token data.

Sync and async are one loop: up to `1 + train.max_staleness` rollout batches are in flight, so a sample is trained on
by a learner at most `max_staleness` versions ahead of the policy that generated it (0 = synchronous).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from alignray.actors.groups import LearnerGroup, RewardGroup, RolloutPool
from alignray.actors.recorder import RolloutRecorder
from alignray.config import Config
from alignray.data import PromptSampler, PromptSet, load_prompts
from alignray.ledger import PromptLedger
from alignray.models import load_tokenizer
from alignray.runlog import RunLog, latest_checkpoint
from alignray.stats import step_metrics

DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class Shard:
    """One worker's part of a step: its prompt rows, the rollout batch ref, and (once done) small generation stats."""

    worker: str
    rows: list[int]
    ref: ray.ObjectRef
    meta_ref: ray.ObjectRef
    meta: dict | None = None


def connect_ray(address: str | None, num_cpus: float) -> None:
    """An existing cluster (`address`, else RAY_ADDRESS, e.g. `auto`), else a new local Ray on loopback."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("DS_ACCELERATOR"):
        env_vars["DS_ACCELERATOR"] = os.environ["DS_ACCELERATOR"]
    env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True)
        return
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(num_cpus + 0.999)), include_dashboard=False,
             _node_ip_address="127.0.0.1", runtime_env=env, configure_logging=True, logging_level="WARNING")


def cpus_needed(cfg: Config) -> float:
    return (cfg.learner.num_ranks * cfg.learner.num_cpus + cfg.rollout.num_workers * cfg.rollout.num_cpus
            + cfg.reward.num_workers * cfg.reward.num_cpus)


class Controller:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.prompts: PromptSet = load_prompts(cfg.data, load_tokenizer(cfg.model))  # validated before any actor
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        self.log = RunLog(self.run_dir, cfg, resume_after=_step_of(checkpoint))
        if self.prompts.skipped:  # data.on_bad_row=skip: say what was dropped, once, where users look
            self.log.note("skipped_prompts", {"source": self.prompts.source, **self.prompts.skipped})
        connect_ray(cfg.train.ray_address, cpus_needed(cfg))
        self.learners = LearnerGroup(cfg)
        self.pool = RolloutPool(cfg)
        self.rollout_target = cfg.rollout.num_workers
        self._control_seen: int | None = None  # mtime of RUN_DIR/control.yaml when last read
        self.rewards = RewardGroup(cfg)
        self.recorder = RolloutRecorder.options(scheduling_strategy=ray.util.scheduling_strategies.
                                                NodeAffinitySchedulingStrategy(ray.get_runtime_context()
                                                                               .get_node_id(), soft=False)
                                                ).remote(str(self.run_dir)) if cfg.train.save_rollouts else None
        self.ledger = PromptLedger(PromptSampler(len(self.prompts), cfg.train.seed, cfg.data.shuffle))
        self.step = 0
        if checkpoint is not None:
            self._restore(checkpoint)

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, on_step=None) -> list[dict]:
        cfg, history = self.cfg.train, []
        self.sync_weights()
        in_flight: deque[list[Shard]] = deque()  # one entry per step: its rollout shards
        planned = self.step
        for step in range(self.step + 1, cfg.steps + 1):
            self.apply_control()
            while len(in_flight) <= cfg.max_staleness and planned < cfg.steps:
                planned += 1
                in_flight.append(self.dispatch(planned))
            t0 = time.perf_counter()
            shards = self.collect(in_flight.popleft())
            t1 = time.perf_counter()
            scored = [self.rewards.score(shard.ref) for shard in shards]
            stats = ray.get([s for _, s in scored])
            t2 = time.perf_counter()
            learner = self.learners.train([ref for ref, _ in scored])
            self.ledger.consume([row for shard in shards for row in shard.rows])
            t3 = time.perf_counter()
            self.step = step
            if step % cfg.sync_interval == 0:
                self.sync_weights()
            t4 = time.perf_counter()
            if self.recorder is not None:
                for part, (ref, _) in enumerate(scored):
                    self.recorder.write.remote(step, part, ref)
            metrics = step_metrics(step, stats, learner, [s.meta for s in shards],
                                   {"generate_s": t1 - t0, "reward_s": t2 - t1, "train_s": t3 - t2, "sync_s": t4 - t3})
            self.log.log(metrics)
            self.log.quarantine(step, [q for s in stats for q in s["quarantined"]])
            history.append(metrics)
            if on_step:
                on_step(metrics)
            if (cfg.save_interval and step % cfg.save_interval == 0) or step == cfg.steps:
                self.save()
        return history

    # ---- stages ------------------------------------------------------------------------------------------------
    def dispatch(self, step: int) -> list[Shard]:
        """Split the step's prompts over the pool's current members; only ids and refs pass through here."""
        names = self.pool.names()
        per_worker = _split(self.cfg.train.prompts_per_step, len(names))
        return [self._launch(name, self.ledger.dispatch(k), step, i)
                for i, (name, k) in enumerate(zip(names, per_worker, strict=True)) if k]

    def _launch(self, name: str, rows: list[int], step: int, part: int) -> Shard:
        seed = zlib.crc32(f"{self.cfg.train.seed}/{step}/{part}".encode())
        ref, meta_ref = self.pool.workers[name].generate.remote(ray.put(self.prompts.batch(rows)), seed)
        return Shard(name, rows, ref, meta_ref)

    def collect(self, shards: list[Shard]) -> list[Shard]:
        """Wait for a step's rollouts; a dead worker is replaced and its prompts are requeued and generated again."""
        done: list[Shard] = []
        pending = list(shards)
        while pending:
            shard = pending.pop(0)
            try:
                shard.meta = ray.get(shard.meta_ref)  # small; raises if the worker died
                done.append(shard)
            except DEAD:
                self.ledger.requeue(shard.rows)
                if shard.worker in self.pool.workers:
                    self.pool.remove(shard.worker)
                self.scale_rollout(self.rollout_target)
                target = self.pool.names()[len(done) % len(self.pool.names())]
                pending.append(self._launch(target, self.ledger.dispatch(len(shard.rows)), self.step, len(done)))
        return done

    def scale_rollout(self, num_workers: int) -> None:
        """Grow or shrink the rollout pool during a run (and keep it there); new members load the current weights."""
        self.rollout_target = num_workers
        while len(self.pool.workers) > num_workers:
            self.pool.remove(self.pool.names()[-1])  # its in-flight shards fail in `collect` and are requeued
        if len(self.pool.workers) < num_workers:
            update = self.learners.weight_update(self.step)
            while len(self.pool.workers) < num_workers:
                self.pool.add(update)

    def apply_control(self) -> None:
        """Elastic scaling while a run goes on: `echo "rollout_workers: 3" > RUN_DIR/control.yaml` takes effect at the
        next step (read when it changes; a bad file is reported once and ignored, never fatal)."""
        path = self.run_dir / "control.yaml"
        if not path.is_file() or path.stat().st_mtime_ns == self._control_seen:
            return
        self._control_seen = path.stat().st_mtime_ns
        try:
            wanted = int((yaml.safe_load(path.read_text()) or {})["rollout_workers"])
            if wanted < 1:
                raise ValueError("must be at least 1")
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
            print(f"alignray: ignoring {path}: expected 'rollout_workers: N' with N >= 1 ({e})", file=sys.stderr)
            return
        if wanted != self.rollout_target:
            self.scale_rollout(wanted)

    def sync_weights(self) -> None:
        self.pool.push_weights(self.learners.weight_update(self.step))

    def close(self) -> None:
        """Stop every actor of this run and free its placement groups (the Ray cluster itself stays up)."""
        self.log.close()
        for part in (self.pool, self.rewards, self.learners):
            part.close()
        if self.recorder is not None:
            ray.get(self.recorder.flush.remote())
            ray.kill(self.recorder)

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self) -> Path:
        step_dir = self.run_dir / "checkpoints" / f"step_{self.step}"
        self.learners.save(str(step_dir))
        state = {"step": self.step, "ledger": self.ledger.state_dict(), "python_rng": random.getstate()}
        (step_dir / "controller.json").write_text(json.dumps(state, default=list))
        return step_dir

    def _restore(self, step_dir: Path) -> None:
        state = json.loads((step_dir / "controller.json").read_text())
        self.step = self.learners.load(str(step_dir))
        self.ledger.load_state_dict(state["ledger"])
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.split("_")[1]) if checkpoint is not None else None
