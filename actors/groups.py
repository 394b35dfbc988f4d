"""Actor groups: placement groups per role, the learner rank group, the elastic rollout pool, the reward workers.

The controller talks to these, never to a single actor: a group hides rank 0 vs. the others, and the pool hides which
workers exist right now (members may be added or removed while a run goes on).
"""

from __future__ import annotations

import itertools

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignray.actors.learner import LearnerWorker
from alignray.actors.reward import RewardWorker
from alignray.actors.rollout import RolloutWorker
from alignray.config import Config
from alignray.errors import AlignrayError
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
    """R DeepSpeed ranks; rank 0 answers for the group."""

    def __init__(self, cfg: Config):
        lc = cfg.learner
        self.pg = reserve("learner", lc.num_ranks, lc.num_cpus, lc.num_gpus)
        cfg_dict = cfg.model_dump(mode="json")
        self.ranks = [LearnerWorker.options(**in_group(self.pg, r, lc.num_cpus, lc.num_gpus)).remote(
            cfg_dict, r, lc.num_ranks) for r in range(lc.num_ranks)]
        addr, port = ray.get(self.ranks[0].address.remote())
        self.num_params = ray.get([w.setup.remote(addr, port) for w in self.ranks])[0]

    def train(self, scored_refs: list) -> dict:
        return ray.get([w.train_step.remote(scored_refs) for w in self.ranks])[0]

    def weight_update(self, version: int) -> WeightUpdate:
        return ray.get([w.weight_update.remote(version) for w in self.ranks])[0]

    def save(self, step_dir: str) -> None:
        ray.get([w.save.remote(step_dir) for w in self.ranks])

    def load(self, step_dir: str) -> int:
        return ray.get([w.load.remote(step_dir) for w in self.ranks])[0]

    def close(self) -> None:
        release(self.ranks, self.pg)


class RolloutPool:
    """Rollout workers, each in its own placement group so the pool can grow or shrink during a run."""

    def __init__(self, cfg: Config):
        self.cfg, self.cfg_dict = cfg, cfg.model_dump(mode="json")
        self.workers: dict[str, ray.actor.ActorHandle] = {}
        self.groups: dict[str, PlacementGroup] = {}
        self._ids = itertools.count()
        for _ in range(cfg.rollout.num_workers):
            self.add()
        ray.get([w.ready.remote() for w in self.workers.values()])

    def add(self, update: WeightUpdate | None = None) -> str:
        """Start a member; with `update` it loads those weights before it takes any prompt."""
        r = self.cfg.rollout
        name = f"rollout-{next(self._ids)}"
        self.groups[name] = reserve(name, 1, r.num_cpus, r.num_gpus)
        self.workers[name] = RolloutWorker.options(**in_group(self.groups[name], 0, r.num_cpus, r.num_gpus)
                                                   ).remote(self.cfg_dict, name)
        if update is not None:
            ray.get(self.workers[name].update_weights.remote(update))
        return name

    def remove(self, name: str) -> None:
        ray.kill(self.workers.pop(name), no_restart=True)
        remove_placement_group(self.groups.pop(name))

    def names(self) -> list[str]:
        return list(self.workers)

    def close(self) -> None:
        for name in list(self.workers):
            self.remove(name)

    def push_weights(self, update: WeightUpdate) -> list[dict]:
        """Every member loads the same buckets (the driver forwards refs only)."""
        return ray.get([w.update_weights.remote(update) for w in self.workers.values()])


class RewardGroup:
    def __init__(self, cfg: Config):
        rc = cfg.reward
        self.pg = reserve("reward", rc.num_workers, rc.num_cpus, rc.num_gpus)
        cfg_dict = cfg.model_dump(mode="json")
        self.workers = [RewardWorker.options(**in_group(self.pg, i, rc.num_cpus, rc.num_gpus)).remote(cfg_dict)
                        for i in range(rc.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])
        self._next = itertools.cycle(self.workers)

    def score(self, rollout_ref) -> tuple:
        """(scored batch ref, stats ref), round-robin over the workers."""
        return next(self._next).score.remote(rollout_ref)

    def close(self) -> None:
        release(self.workers, self.pg)


def release(actors: list, pg: PlacementGroup) -> None:
    for actor in actors:
        ray.kill(actor, no_restart=True)
    remove_placement_group(pg)
