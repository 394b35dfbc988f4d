"""The controller's per-step pipeline (it drives actors, like controller.py): a step's prompts are split into
shards, one per ready rollout member; each shard is generated, then scored by a ready reward member, by
reference.

Faults are handled per shard, so one death costs only its own work: a rollout worker that dies or hangs is
replaced and its prompts are requeued and generated again (same step, same part, same seed); a reward worker
that dies or hangs is replaced and the same rollout batch is re-scored; a rollout batch lost with its node is
regenerated. A prompt is therefore never lost, and never trained twice. With `reward.service` each score call
carries the ready reward-model servers; a server its reward worker found lost is replaced, and a batch whose
servers were all lost (or hung) is re-scored.

With algo.dynamic_sampling a step may take further generation rounds (`collect`): their shards are parts of
the same step, drawn from the ledger and recovered like the first round's.
"""

from __future__ import annotations

import itertools
import sys
import time
import zlib
from dataclasses import dataclass, field

import ray

from alignray.actors.calls import DIED, HUNG, OBJECT_LOST, ActorFault, classify
from alignray.actors.pool import Pool
from alignray.actors.rm_client import LOST_KEY
from alignray.actors.watchdog import WATCHDOG
from alignray.algorithms.dynamic_sampling import prompts_to_add
from alignray.config import Config
from alignray.data import PromptSet
from alignray.driver.events import FaultEvent, FaultLog
from alignray.driver.ledger import PromptLedger

POLL_S = 0.25


@dataclass
class Shard:
    """One rollout member's part of a step: its prompt rows and, as it moves along, the refs of its
    batches."""

    step: int
    part: int
    rows: list[int]
    worker: str | None = None
    ref: ray.ObjectRef | None = None  # the rollout batch (stays in the object store)
    meta_ref: ray.ObjectRef | None = None
    started: float = field(default_factory=time.monotonic)
    meta: dict | None = None
    generated_at: float = 0.0  # time.monotonic() when its rollout batch was ready
    scorer: str | None = None
    scored_ref: ray.ObjectRef | None = None
    stats_ref: ray.ObjectRef | None = None
    score_started: float = 0.0
    stats: dict | None = None


class ShardPipeline:
    def __init__(self, cfg: Config, prompts: PromptSet, ledger: PromptLedger, rollout: Pool,
                 reward: Pool, faults: FaultLog, servers: Pool | None = None):
        """`servers`: the reward-model servers (reward.service), sent with every score call."""
        self.cfg, self.prompts, self.ledger = cfg, prompts, ledger
        self.rollout, self.reward, self.faults, self.servers = rollout, reward, faults, servers
        self.timeouts = cfg.train.call_timeout_s
        self._turn = itertools.count()
        self._said_short = False  # algo.dynamic_sampling: a step short of informative groups is said once

    def dispatch(self, step: int, prompts: int | None = None, first_part: int = 0) -> list[Shard]:
        """Split the step's prompts (`prompts`, else train.prompts_per_step) over the ready rollout members,
        as parts `first_part`, …; only ids and refs pass through here."""
        self.rollout.reconcile()
        if not self.rollout.ready():
            self.rollout.wait_ready()
        names = self.rollout.ready()
        counts = _split(prompts or self.cfg.train.prompts_per_step, len(names))
        shards = [Shard(step, first_part + part, self.ledger.dispatch(k))
                  for part, k in enumerate(counts) if k]
        for shard, name in zip(shards, names, strict=False):
            self._launch(shard, name)
        return shards

    def _launch(self, shard: Shard, name: str) -> None:
        seed = zlib.crc32(f"{self.cfg.train.seed}/{shard.step}/{shard.part}".encode())
        prompts = ray.put(self.prompts.batch(shard.rows))
        shard.worker, shard.started, shard.meta = name, time.monotonic(), None
        shard.ref, shard.meta_ref = WATCHDOG.launch("rollout", name, self.rollout.actor(name), "generate",
                                                    prompts, seed)

    def collect(self, shards: list[Shard]) -> tuple[list[Shard], int]:
        """The step's shards generated and scored (`gather`), and how many generation rounds it took.

        With algo.dynamic_sampling the reward members mark the prompt groups whose samples share one reward
        (`filtered`); while the step has fewer than train.prompts_per_step informative groups, one more round
        generates exactly the missing number of new prompts — the ledger's next ones, so a requeue, a
        rollback and a resume treat them like any other — up to algo.dynamic_sampling_max_rounds rounds; then
        the step trains on the groups it has (said once). Every prompt of every round is consumed with the
        step, filtered or not."""
        done, rounds = self.gather(shards), 1
        algo, target = self.cfg.algo, self.cfg.train.prompts_per_step
        if not algo.dynamic_sampling:
            return done, rounds
        while need := prompts_to_add(target, _informative(done), rounds, algo.dynamic_sampling_max_rounds):
            rounds += 1
            done += self.gather(self.dispatch(done[0].step, need, first_part=done[-1].part + 1))
        if _informative(done) < target and not self._said_short:
            self._said_short = True
            print(f"alignray: warning: step {done[0].step} has {_informative(done)} of {target} informative "
                  f"prompt groups after {rounds} generation rounds (algo.dynamic_sampling_max_rounds); it "
                  "trains on those, a step with none makes no update (said once: metrics.jsonl has samples, "
                  "batch/filtered_groups and batch/generation_rounds per step)", file=sys.stderr, flush=True)
        return done, rounds

    def gather(self, shards: list[Shard]) -> list[Shard]:
        """Wait until every shard is generated and scored, recovering from faults on the way; in part
        order."""
        todo, done = list(shards), []
        while todo:
            for pool in (self.rollout, self.reward, self.servers):
                if pool is not None:
                    pool.reconcile()
            waiting = {}
            for shard in todo:
                if shard.meta_ref is None:
                    self._relaunch(shard)
                elif shard.meta is not None and shard.stats_ref is None:
                    self._score(shard)
                ref = shard.meta_ref if shard.meta is None else shard.stats_ref
                if ref is not None:
                    waiting[ref] = shard
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=POLL_S, fetch_local=False) if waiting \
                else (time.sleep(POLL_S) or [], None)
            for ref in ready:
                if self._advance(waiting[ref], ref):
                    todo.remove(waiting[ref])
                    done.append(waiting[ref])
            self._check_hung(todo)
        return sorted(done, key=lambda s: s.part)

    def _advance(self, shard: Shard, ref: ray.ObjectRef) -> bool:
        """One of the shard's calls returned; True once the shard is scored."""
        if ref is shard.meta_ref:
            try:
                shard.meta = ray.get(ref)
                shard.generated_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - classified: faults handled, user errors and bugs re-raised
                self._rollout_lost(shard, classify(shard.worker, exc))
            return False
        try:
            shard.stats = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - classified as above
            fault = classify(shard.scorer, exc)
            if fault.cause == OBJECT_LOST:  # the rollout batch went with its node: generate it again
                self._rollout_lost(shard, ActorFault(shard.worker, "batch lost", fault.detail), replace=False)
            else:
                self._scorer_lost(shard, fault)
            return False
        for name, why in shard.stats.pop(LOST_KEY, {}).items():  # its worker failed over from them
            self._server_lost(ActorFault(name, DIED, why), "its callers failed over")
        return True

    def _score(self, shard: Shard) -> None:
        names = self.reward.ready()
        servers = (None if self.servers is None  # reward.service: the ready servers go with the call
                   else {n: self.servers.actor(n) for n in self.servers.ready()})
        if not names or servers == {}:
            return  # every reward member (or server) is starting or pending: scored once one is ready
        # the member that generated it when it also scores (train.colocate: a learner rank), else round robin
        shard.scorer = shard.worker if shard.worker in names else names[next(self._turn) % len(names)]
        shard.scored_ref, shard.stats_ref = WATCHDOG.launch("reward", shard.scorer,
                                                            self.reward.actor(shard.scorer), "score",
                                                            shard.ref, *([servers] if servers else []))
        shard.score_started = time.monotonic()

    def _relaunch(self, shard: Shard) -> None:
        names = self.rollout.ready()
        if names:
            shard.rows = self.ledger.dispatch(len(shard.rows))
            self._launch(shard, names[shard.part % len(names)])

    def _rollout_lost(self, shard: Shard, fault: ActorFault, replace: bool = True) -> None:
        """Requeue the shard's prompts (they are generated again, same step and part) and replace its
        worker."""
        self.ledger.requeue(shard.rows)
        self.faults.add("requeued", len(shard.rows))
        action = f"{len(shard.rows)} prompts requeued"
        if replace and fault.actor in self.rollout.members:
            self.rollout.replace(fault, action)
        elif not replace:
            self.faults.record(FaultEvent("rollout", fault.actor, fault.cause, action, shard.step - 1,
                                          fault.detail),
                               restart=False)
        shard.meta_ref = shard.ref = shard.stats_ref = shard.scored_ref = None
        shard.meta = None

    def _scorer_lost(self, shard: Shard, fault: ActorFault) -> None:
        if fault.actor in self.reward.members:
            self.reward.replace(fault, "batch re-scored")
        else:  # a reward-model server its worker called (reward.service)
            self._server_lost(fault, "batch re-scored")
        self.faults.add("rescored", 1)
        shard.scorer = shard.scored_ref = shard.stats_ref = None

    def _server_lost(self, fault: ActorFault, action: str) -> None:
        """Replace a reward-model server a reward worker found dead or hung (once: others may report it
        too)."""
        if self.servers is not None and fault.actor in self.servers.members:
            self.servers.replace(fault, action)

    def _check_hung(self, todo: list[Shard]) -> None:
        now = time.monotonic()
        for shard in todo:
            if (shard.meta_ref is not None and shard.meta is None
                    and now - shard.started > self.timeouts.generate):
                self._rollout_lost(shard, ActorFault(shard.worker, HUNG,
                                                     f"generate took > {self.timeouts.generate:g}s"))
            elif shard.stats_ref is not None and now - shard.score_started > self.timeouts.score:
                self._scorer_lost(shard, ActorFault(shard.scorer, HUNG,
                                                    f"score took > {self.timeouts.score:g}s"))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _informative(shards: list[Shard]) -> int:
    """Prompts of these scored shards whose group was not filtered (algo.dynamic_sampling), counted as
    dispatched: a prompt drawn twice into one step (an epoch boundary) is two."""
    return sum(len(s.rows) - s.stats["filtered_groups"] for s in shards)
