"""The learner rank group (an `actors.ranks.RankGroup`) and the two elastic worker pools (rollout, reward) the
controller drives.

The controller talks to these, never to a single actor: the group hides rank 0 vs. the others, the pools hide which
members exist right now. Every call waits through `actors.calls.wait_calls` (per-kind timeout, faults classified);
a learner rank that fails fails the group as a whole (`ActorFault` with actor "learner"), which the controller
recovers by starting a fresh group from the latest snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignray.actors.learner import LearnerWorker
from alignray.actors.pool import WorkerPool
from alignray.actors.ranks import RankGroup
from alignray.actors.reward import RewardWorker
from alignray.actors.rollout import RolloutWorker
from alignray.config import Config
from alignray.events import FaultLog

if TYPE_CHECKING:
    from alignray.weights import WeightUpdate


class LearnerGroup(RankGroup):
    """R DeepSpeed ranks of the policy; rank 0 answers for the group; any rank's failure is the group's
    (`ActorFault` with actor "learner")."""

    def __init__(self, cfg: Config):
        lc, self.timeouts = cfg.learner, cfg.train.call_timeout_s
        super().__init__("learner", LearnerWorker, cfg.model_dump(mode="json"), lc.num_ranks, lc.num_cpus,
                         lc.num_gpus, self.timeouts.start)
        self.num_params = self.setup_results[0]
        self.rank_pids = dict(zip(self.names(), self.call_all("pid", 60), strict=True))

    def train(self, scored_refs: list) -> dict:
        return self.call_all("train_step", self.timeouts.train, scored_refs)[0]

    def weight_update(self, version: int) -> WeightUpdate:
        return self.call_all("weight_update", self.timeouts.sync, version)[0]

    def save(self, step_dir: str, hf: bool = True) -> None:
        self.call_all("save", self.timeouts.save, step_dir, hf)

    def load(self, step_dir: str) -> int:
        return self.call_all("load", self.timeouts.start, step_dir)[0]


def rollout_pool(cfg: Config, faults: FaultLog, current_weights) -> WorkerPool:
    """Rollout members load `current_weights()` (the latest WeightUpdate, or None before the first) before any work."""
    r, cfg_dict = cfg.rollout, cfg.model_dump(mode="json")

    def start(actor):
        update = current_weights()
        return actor.update_weights.remote(update) if update is not None else actor.ready.remote()

    return WorkerPool("rollout", lambda options, name: RolloutWorker.options(**options).remote(cfg_dict, name),
                      start, r.num_cpus, r.num_gpus, r.num_workers, faults, cfg.train.call_timeout_s.start)


def reward_pool(cfg: Config, faults: FaultLog) -> WorkerPool:
    rc, cfg_dict = cfg.reward, cfg.model_dump(mode="json")
    return WorkerPool("reward", lambda options, name: RewardWorker.options(**options).remote(cfg_dict),
                      lambda actor: actor.ready.remote(), rc.num_cpus, rc.num_gpus, rc.num_workers, faults,
                      cfg.train.call_timeout_s.start)
