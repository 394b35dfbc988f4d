"""The learner rank group and the two elastic worker pools (rollout, reward) the controller drives.

The controller talks to these, never to a single actor: the group hides rank 0 vs. the others, the pools hide which
members exist right now. Every call waits through `actors.calls.wait_calls` (per-kind timeout, faults classified);
a learner rank that fails fails the group as a whole (`ActorFault` with actor "learner"), which the controller
recovers by starting a fresh group from the latest snapshot.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignray.actors.calls import ActorFault, kill, wait_calls
from alignray.actors.learner import LearnerWorker
from alignray.actors.pool import WorkerPool
from alignray.actors.reward import RewardWorker
from alignray.actors.rollout import RolloutWorker
from alignray.config import Config
from alignray.errors import AlignrayError
from alignray.events import FaultLog
from alignray.weights import WeightUpdate

PLACEMENT_TIMEOUT_S = 120


def reserve(role: str, bundles: int, cpus: float, gpus: float, strategy: str = "PACK") -> PlacementGroup:
    """A placement group of `bundles` × {CPU: cpus, GPU: gpus}; a clear error if the cluster cannot hold it."""
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    pg = placement_group([dict(resources) for _ in range(bundles)], strategy=strategy, name=f"alignray-{role}")
    if not pg.wait(PLACEMENT_TIMEOUT_S):
        remove_placement_group(pg)
        raise AlignrayError(f"cannot place {role}: {bundles} × {resources} did not fit in {PLACEMENT_TIMEOUT_S}s; "
                            f"cluster has {ray.available_resources()} available")
    return pg


def in_group(pg: PlacementGroup, index: int, cpus: float, gpus: float) -> dict:
    return {"num_cpus": cpus, "num_gpus": gpus, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=index)}


class LearnerGroup:
    """R DeepSpeed ranks; rank 0 answers for the group; any rank's failure is the group's (`ActorFault`)."""

    def __init__(self, cfg: Config):
        lc, self.timeouts = cfg.learner, cfg.train.call_timeout_s
        self.pg = reserve("learner", lc.num_ranks, lc.num_cpus, lc.num_gpus)
        cfg_dict = cfg.model_dump(mode="json")
        self.ranks = [LearnerWorker.options(**in_group(self.pg, r, lc.num_cpus, lc.num_gpus)).remote(
            cfg_dict, r, lc.num_ranks) for r in range(lc.num_ranks)]
        addr, port = self._call_rank0("address", self.timeouts.start)
        self.num_params = self._all("setup", self.timeouts.start, addr, port)[0]
        self.rank_pids = dict(zip([f"learner-{r}" for r in range(lc.num_ranks)], self._all("pid", 60), strict=True))

    def _all(self, method: str, timeout: float, *args) -> list:
        """`method(*args)` on every rank; the ranks' results in rank order, or `ActorFault("learner", ...)`."""
        calls = {f"learner-{r}": getattr(w, method).remote(*args) for r, w in enumerate(self.ranks)}
        results, faults = wait_calls(calls, timeout, stop_on_fault=True)
        if faults:
            name, fault = next(iter(faults.items()))
            raise ActorFault("learner", fault.cause, f"{name} during {method}: {fault.detail}")
        return [results[f"learner-{r}"] for r in range(len(self.ranks))]

    def _call_rank0(self, method: str, timeout: float):
        results, faults = wait_calls({"learner-0": getattr(self.ranks[0], method).remote()}, timeout)
        if faults:
            raise ActorFault("learner", faults["learner-0"].cause, f"learner-0 during {method}")
        return results["learner-0"]

    def train(self, scored_refs: list) -> dict:
        return self._all("train_step", self.timeouts.train, scored_refs)[0]

    def weight_update(self, version: int) -> WeightUpdate:
        return self._all("weight_update", self.timeouts.sync, version)[0]

    def save(self, step_dir: str, hf: bool = True) -> None:
        self._all("save", self.timeouts.save, step_dir, hf)

    def load(self, step_dir: str) -> int:
        return self._all("load", self.timeouts.start, step_dir)[0]

    def close(self) -> None:
        for actor in self.ranks:
            kill(actor)
        try:
            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - its node may be gone
            pass


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
