"""The driver: schedules prompts → rollouts → rewards → learner → weights, by reference; never touches token
data.

Sync and async are one loop: up to `1 + train.max_staleness` rollout batches are in flight, so a sample is
trained on by a learner at most `max_staleness` versions ahead of the policy that generated it (0 =
synchronous).

Any actor may die at any moment (docs/faults-and-scaling.md). A rollout or reward worker that dies, hangs
or loses its node is replaced; its prompts are requeued (or its batch re-scored). A learner rank that fails
takes the rank group with it: a fresh group loads the newest snapshot, the ledger rolls back to it, and the
steps since are re-trained. Every fault is one warning line and a line in RUN_DIR/events.jsonl.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from collections import deque
from pathlib import Path

import ray

from alignray.actors.calls import ActorFault, kill, wait_calls
from alignray.actors.cluster import check_capacity, connect_ray
from alignray.actors.groups import LearnerGroup, RankPool, reward_pool, rm_server_pool, rollout_pool
from alignray.actors.recorder import RolloutRecorder
from alignray.actors.watchdog import WATCHDOG
from alignray.config import Config
from alignray.data import PromptSampler, PromptSet, load_prompts
from alignray.driver.capacity import demands_of
from alignray.driver.events import FaultEvent, FaultLog
from alignray.driver.hacking import HackingAlarm
from alignray.driver.ledger import PromptLedger
from alignray.driver.runlog import RunLog, latest_checkpoint, latest_state
from alignray.driver.scaling import Scaler
from alignray.driver.shards import Shard, ShardPipeline
from alignray.driver.stats import step_metrics
from alignray.errors import AlignrayError
from alignray.tokenizer import load_tokenizer


def cpus_needed(cfg: Config) -> float:
    return sum(d.count * d.cpus for d in demands_of(cfg))


class Controller:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        # validated before any actor
        self.prompts: PromptSet = load_prompts(cfg.data, load_tokenizer(cfg.model),
                                               keep_fields=bool(cfg.rollout.env))  # rows for env reset
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        self.log = RunLog(self.run_dir, cfg, resume_after=_step_of(checkpoint))
        if self.prompts.skipped:  # data.on_bad_row=skip: say what was dropped, once, where users look
            self.log.note("skipped_prompts", {"source": self.prompts.source, **self.prompts.skipped})
        if cfg.train.prompts_per_step > len(self.prompts):  # legal, but slow and repetitive: say so first
            repeats = cfg.train.prompts_per_step / len(self.prompts)
            print(f"alignray: note: train.prompts_per_step={cfg.train.prompts_per_step} is more than the "
                  f"{len(self.prompts)} prompts of {self.prompts.source}: every step samples each prompt "
                  f"about {repeats:.0f} times", file=sys.stderr, flush=True)
        connect_ray(cfg.train.ray_address, cpus_needed(cfg))
        check_capacity(cfg)  # a run the cluster can never hold fails now, naming role and numbers
        self.step = 0  # the last completed step: owned here; the fault log stamps events with it
        self.faults = FaultLog(self.run_dir, cfg.train.max_restarts, lambda: self.step)
        # no silent hang: every actor call is watched
        WATCHDOG.start(cfg.train.hang_report_s, cfg.train.hang_report_startup_s, self.faults, self.run_dir)
        self.current_update = None  # the latest published weights: what a new rollout member loads first
        if cfg.train.colocate:  # the learner ranks generate and score: no worker pools of their own
            group = lambda: self.learners  # noqa: E731 - read at each call: a recovered group serves at once
            self.rollout, self.reward = RankPool("rollout", group), RankPool("reward", group)
        else:
            self.rollout = rollout_pool(cfg, self.faults, lambda: self.current_update)
            self.reward = reward_pool(cfg, self.faults)
        # reward.service: the reward models live on these servers, called by the reward workers
        self.servers = rm_server_pool(cfg, self.faults) if cfg.reward.service.enabled else None
        for pool in self._pools().values():  # start the placed members now: they boot while the ranks do
            pool.reconcile()
        self.learners = self._start_learners()
        self.recorder = (RolloutRecorder.options(scheduling_strategy=ray.util.scheduling_strategies.
                                                 NodeAffinitySchedulingStrategy(ray.get_runtime_context()
                                                                                .get_node_id(), soft=False)
                                                 ).remote(str(self.run_dir))
                         if cfg.train.save_rollouts else None)
        self.ledger = PromptLedger(PromptSampler(len(self.prompts), cfg.train.seed, cfg.data.shuffle))
        if checkpoint is not None:
            self._restore(checkpoint)
        self._initial = self._controller_state()  # where a learner recovery with no snapshot goes back to
        self.in_flight: deque[list[Shard]] = deque()  # one entry per step: its rollout shards
        self.planned = self.step
        self.shards = ShardPipeline(cfg, self.prompts, self.ledger, self.rollout, self.reward, self.faults,
                                    self.servers)
        gold = next((s.name for s in cfg.reward.scorers if s.gold), None)
        self.hacking = HackingAlarm(cfg.reward.hacking, gold)
        self.scaler = Scaler(cfg, self.run_dir, self._pools(), self.faults)

    def _pools(self) -> dict:
        """The run's elastic pools by role: rollout, reward, and rm_server with reward.service."""
        pools = {"rollout": self.rollout, "reward": self.reward}
        return pools | ({"rm_server": self.servers} if self.servers is not None else {})

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, on_step=None) -> list[dict]:
        cfg, history = self.cfg.train, []
        self._recovering(self._start_up)
        while self.step < cfg.steps:
            self._recovering(self.scaler.apply_requests)  # `alignray scale` / RUN_DIR/control.yaml
            metrics = self._recovering(self.train_one_step)
            if metrics is None:  # the learner group was lost and rolled back: go on from the restored step
                continue
            self.scaler.after_step(metrics, self.step)  # autoscaling rule; RUN_DIR/status.json
            WATCHDOG.first_step = False  # later calls are reported after train.hang_report_s
            alarm, why = self.hacking.update(metrics)  # adds hacking/score to the metrics
            self.log.log(metrics)
            if alarm is not None:
                self._hacking(alarm, why)
            history.append(metrics)
            if on_step:
                on_step(metrics)
            self._recovering(self._persist)
        return history

    def _hacking(self, alarm: str, why: str) -> None:
        """A reward-hacking alarm (alignray.driver.hacking): a warning line and event, or checkpoint and
        stop."""
        if alarm == "warn":
            self.faults.record(FaultEvent("reward", "reward", "hacking suspected", why), restart=False)
            return
        step_dir = self.save()
        raise AlignrayError(f"stopped at step {self.step}: reward hacking: {why} (reward.hacking.stop_at="
                            f"{self.cfg.reward.hacking.stop_at:g}); checkpoint {step_dir}")

    def _start_up(self) -> None:
        self.sync_weights()
        for pool in self._pools().values():
            pool.wait_ready()

    def train_one_step(self) -> dict:
        cfg, step = self.cfg.train, self.step + 1
        while len(self.in_flight) <= cfg.max_staleness and self.planned < cfg.steps:
            self.planned += 1
            self.in_flight.append(self.shards.dispatch(self.planned))
        t0 = time.monotonic()
        shards, rounds = self.shards.collect(self.in_flight.popleft())  # more rounds: algo.dynamic_sampling
        t2 = time.monotonic()
        t1 = min(max([t0] + [s.generated_at for s in shards]), t2)  # the driver waited on generation until t1
        learner = self.learners.train([s.scored_ref for s in shards])
        self.ledger.consume([row for shard in shards for row in shard.rows])
        t3 = time.monotonic()
        self.step = step
        if step % cfg.sync_interval == 0:
            self.sync_weights()
        t4 = time.monotonic()
        if self.recorder is not None:
            for part, shard in enumerate(shards):
                self.recorder.write.remote(step, part, shard.scored_ref)
        stats = [s.stats for s in shards]
        self.log.quarantine(step, [q for s in stats for q in s["quarantined"]])
        metrics = step_metrics(step, stats, learner, [s.meta for s in shards],
                               {"generate_s": t1 - t0, "reward_s": t2 - t1, "train_s": t3 - t2,
                                "sync_s": t4 - t3})
        metrics.update({"rollout/pending": self.rollout.count("pending"),
                        "reward/pending": self.reward.count("pending"),
                        "reward/workers": len(self.reward.ready()), **self.faults.metrics()})
        if self.cfg.algo.dynamic_sampling:  # prompts generated for the step, filtered ones included
            metrics.update({"batch/generation_rounds": rounds,
                            "batch/prompts": sum(len(s.rows) for s in shards)})
        return metrics

    def _persist(self) -> None:
        """Checkpoint at save_interval and at the end; a light snapshot at snapshot_interval in between."""
        cfg, step = self.cfg.train, self.step
        if (cfg.save_interval and step % cfg.save_interval == 0) or step == cfg.steps:
            self.save()
        elif cfg.snapshot_interval and step % cfg.snapshot_interval == 0:
            self.save(snapshot=True)

    def _recovering(self, fn):
        """Run `fn`; if the learner group fails meanwhile (or its published weights are lost), recover it and
        return None."""
        try:
            return fn()
        except ActorFault as fault:
            self.recover_learner(fault)
            return None

    # ---- faults --------------------------------------------------------------------------------------------
    def _start_learners(self) -> LearnerGroup:
        while True:
            try:
                return LearnerGroup(self.cfg)
            except ActorFault as fault:
                self.faults.record(FaultEvent("learner", "learner", fault.cause, "starting a new rank group",
                                              self.step, fault.detail))

    def recover_learner(self, fault: ActorFault) -> None:
        """Tear the rank group down, start a fresh one from the newest snapshot, roll the ledger back to it,
        drop rollouts of newer policies (their prompts are requeued by the rollback), and republish the
        weights. A failure while recovering starts the recovery over (each try counts against
        train.max_restarts)."""
        while True:
            state_dir = latest_state(self.run_dir, self.step)
            back_to = _step_of(state_dir) or 0
            self.faults.record(FaultEvent("learner", "learner", fault.cause,
                                          f"new rank group from step {back_to}; "
                                          f"{self.step - back_to} step(s) to re-train", self.step,
                                          fault.detail))
            try:
                self._roll_back_to(state_dir, back_to)
                return
            except ActorFault as again:
                fault = again

    def _roll_back_to(self, state_dir: Path | None, back_to: int) -> None:
        self.learners.close()
        self.learners = self._start_learners()
        dropped = sum(self.ledger.in_flight.values())  # prompts out for rollouts that are now discarded
        self.in_flight.clear()
        if state_dir is not None:
            self.learners.load(str(state_dir))
        self._load_controller_state(json.loads((state_dir / "controller.json").read_text()) if state_dir
                                    else self._initial)
        self.faults.add("steps_retrained", self.step - back_to)
        self.faults.add("requeued", dropped)
        self.step = self.planned = back_to
        self.log.rollback(back_to)
        if self.recorder is not None:
            self.recorder.rollback.remote(back_to)
        self.sync_weights()

    # ---- weights and scaling -------------------------------------------------------------------------------
    def sync_weights(self) -> dict:
        """Publish the learner's weights and load them on every rollout member (replacing members that
        fail)."""
        self.current_update = self.learners.weight_update(self.step)
        results, lost = self.rollout.broadcast("update_weights", self.cfg.train.call_timeout_s.sync,
                                               self.current_update)
        if lost or self.rollout.weights_lost:
            raise ActorFault("learner", "weights lost",
                             lost[0].detail if lost else "read by a starting member")
        return results

    def close(self, stopping: bool = False) -> None:
        """Stop every actor of this run and free its placement groups (the Ray cluster itself stays up).
        `stopping` (a signal ends the run): no Ray call that could wait on a cluster going down — the local
        Ray's shutdown, or the driver's exit on a cluster, ends the run's actors; only the logs are closed."""
        WATCHDOG.stop()
        if stopping:
            self.log.close()
            return
        try:
            for part in (self.scaler, *self._pools().values(), self.learners):
                part.close()
            if self.recorder is not None:
                _, lost = wait_calls({"recorder": self.recorder.flush.remote()},
                                     self.cfg.train.call_timeout_s.save)
                if lost:  # the last steps' rollouts may be missing from RUN_DIR/rollouts: say so, once
                    print(f"alignray: warning: rollout recorder {lost['recorder'].cause}; the last rollouts "
                          "Parquet files may be incomplete", file=sys.stderr, flush=True)
                kill(self.recorder)
        finally:
            # last: train.loggers [mlflow] uploads the run directory, flushed rollouts included
            self.log.close()

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def save(self, snapshot: bool = False) -> Path:
        """A checkpoint (DeepSpeed state + hf/ + controller.json), or a snapshot (no hf/; only the latest
        kept)."""
        step_dir = self.run_dir / ("snapshots" if snapshot else "checkpoints") / f"step_{self.step}"
        self.learners.save(str(step_dir), hf=not snapshot)
        (step_dir / "controller.json").write_text(json.dumps(self._controller_state()))
        if snapshot:
            for old in (self.run_dir / "snapshots").glob("step_*"):
                if old != step_dir:
                    shutil.rmtree(old, ignore_errors=True)
        return step_dir

    def _controller_state(self) -> dict:
        """A detached copy (JSON-safe) of the step, data position and driver RNG."""
        state = {"step": self.step, "ledger": self.ledger.state_dict(), "python_rng": random.getstate()}
        return json.loads(json.dumps(state, default=list))

    def _load_controller_state(self, state: dict) -> None:
        self.ledger.load_state_dict(state["ledger"])
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))

    def _restore(self, step_dir: Path) -> None:
        self.step = self.learners.load(str(step_dir))
        self._load_controller_state(json.loads((step_dir / "controller.json").read_text()))


def _step_of(checkpoint: Path | None) -> int | None:
    return int(checkpoint.name.split("_")[1]) if checkpoint is not None else None
