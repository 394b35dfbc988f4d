"""The learner rank group (an `actors.ranks.RankGroup`) and the elastic worker pools (rollout, reward, and
with `reward.service` the reward-model servers) the controller drives.

The controller talks to these, never to a single actor: the group hides rank 0 vs. the others, the pools hide
which members exist right now. Every call waits through `actors.calls.wait_calls` (per-kind timeout, faults
classified); a learner rank that fails fails the group as a whole (`ActorFault` with actor "learner"), which
the controller recovers by starting a fresh group from the latest snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alignray.actors.calls import ActorFault
from alignray.actors.learner import LearnerWorker
from alignray.actors.pool import WorkerPool
from alignray.actors.ranks import RankGroup
from alignray.actors.reward import RewardWorker
from alignray.actors.rm_server import RewardModelServer
from alignray.actors.rollout import RolloutWorker
from alignray.config import Config
from alignray.driver.events import FaultLog

if TYPE_CHECKING:
    from alignray.rollout.weights import WeightUpdate


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
    """Rollout members load `current_weights()` (the latest WeightUpdate, or None before the first) before any
    work."""
    r, cfg_dict = cfg.rollout, cfg.model_dump(mode="json")

    def start(actor):
        update = current_weights()
        return actor.update_weights.remote(update) if update is not None else actor.ready.remote()

    return WorkerPool("rollout", lambda options, name: RolloutWorker.options(**options).remote(cfg_dict,
                                                                                               name),
                      start, r.num_cpus, r.num_gpus, r.num_workers, faults, cfg.train.call_timeout_s.start)


def reward_pool(cfg: Config, faults: FaultLog) -> WorkerPool:
    rc, cfg_dict = cfg.reward, cfg.model_dump(mode="json")
    return WorkerPool("reward", lambda options, name: RewardWorker.options(**options).remote(cfg_dict),
                      lambda actor: actor.ready.remote(), rc.num_cpus, rc.num_gpus, rc.num_workers, faults,
                      cfg.train.call_timeout_s.start)


def rm_server_pool(cfg: Config, faults: FaultLog) -> WorkerPool:
    """The reward-model servers (`reward.service`): each loads every model scorer in its start call."""
    sc, cfg_dict = cfg.reward.service, cfg.model_dump(mode="json")
    return WorkerPool("rm_server",
                      lambda options, name: RewardModelServer.options(**options).remote(cfg_dict),
                      lambda actor: actor.ready.remote(), sc.num_cpus, sc.num_gpus, sc.num_servers, faults,
                      cfg.train.call_timeout_s.start)


class RankPool:
    """The learner ranks seen as the rollout (or reward) pool of a colocated run (`train.colocate`): every
    rank is a ready member that generates (or scores) its share. The group is read through `group()` at each
    call, so a recovered group serves at once. A member's fault is the group's: `replace` raises it for the
    controller's learner recovery (snapshot, rollback, re-train). Fixed size: it is scaled with
    `learner.num_ranks`."""

    elastic = False
    resources: dict[str, float] = {}  # placed with the learner group, never by the scaler

    def __init__(self, role: str, group):
        self.role, self.group = role, group
        self.weights_lost = False

    @property
    def members(self) -> dict[str, None]:
        return dict.fromkeys(self.group().names())

    @property
    def target(self) -> int:
        return len(self.group().ranks)

    def ready(self) -> list[str]:
        return self.group().names()

    def actor(self, name: str):
        return self.group().ranks[self.group().names().index(name)]

    def states(self) -> dict[str, str]:
        return dict.fromkeys(self.group().names(), "ready")

    def count(self, state: str) -> int:
        return self.target if state == "ready" else 0

    def pids(self) -> dict[str, int]:
        return dict(self.group().rank_pids)

    def reconcile(self) -> None:
        """Nothing to move along: the ranks are started (and replaced) as one group."""

    def wait_ready(self, minimum: int = 1) -> None:
        """Ready as soon as the group is: it is built whole."""

    def replace(self, fault: ActorFault, action: str = "") -> None:
        raise ActorFault("learner", fault.cause,
                         f"{fault.actor} while it was the {self.role} member: {fault.detail}")

    def broadcast(self, method: str, timeout: float, *args) -> tuple[dict, list[ActorFault]]:
        results = self.group().call_all(method, timeout, *args)
        return dict(zip(self.group().names(), results, strict=True)), []

    def scale(self, target: int) -> None:
        raise ValueError(f"the {self.role} work runs inside the learner ranks (train.colocate): it "
                         "scales with learner.num_ranks, not with a scale request")

    def close(self) -> None:
        """The group is closed by its owner (the controller)."""
