"""Can the cluster ever hold this run? A pure rule over role demands and node totals (no Ray here).

Ray would wait for a placement group that never fits (and without an autoscaler, nothing will change), so the
controller checks once, before any group is created, and fails at once naming the role and the numbers. With
an autoscaler the cluster may grow: only what even its largest size cannot hold is an error; the rest is a
wait.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignray.config import Config


@dataclass(frozen=True)
class Demand:
    """`count` actors of one role, each in its own bundle of `cpus` CPUs and `gpus` GPUs."""

    role: str
    count: int
    cpus: float
    gpus: float


def demands_of(cfg: Config) -> list[Demand]:
    """The actors a run starts (`train.colocate`: the learner ranks alone, they generate and score too; with
    `reward.service`, the reward-model servers too)."""
    learner = [Demand("learner", cfg.learner.num_ranks, cfg.learner.num_cpus, cfg.learner.num_gpus)]
    if cfg.train.colocate:
        return learner
    sc = cfg.reward.service
    return learner + [Demand("rollout", cfg.rollout.num_workers, cfg.rollout.num_cpus, cfg.rollout.num_gpus),
                      Demand("reward", cfg.reward.num_workers, cfg.reward.num_cpus, cfg.reward.num_gpus)] + \
        ([Demand("rm_server", sc.num_servers, sc.num_cpus, sc.num_gpus)] if sc.enabled else [])


def _fmt(x: float) -> str:
    return f"{x:g}"


def _field(role: str) -> str:
    return {"learner": "learner.num_ranks", "rollout": "rollout.num_workers",
            "reward": "reward.num_workers", "rm_server": "reward.service.num_servers"}[role]


def _section(role: str) -> str:
    """Where a role's per-actor resources are set (`<section>.num_cpus`)."""
    return "reward.service" if role == "rm_server" else role


def infeasible(demands: list[Demand], nodes: list[dict[str, float]],
               autoscale_max: dict[str, float] | None = None, where: str | None = None) -> str | None:
    """Why `demands` can never be placed on `nodes` (each node's total resources), or None if they may fit.

    `autoscale_max`: the most of each resource the autoscaler could ever provide (None: no autoscaler, the
    nodes are all there will be). Checks each bundle against the largest node, then the sum over roles against
    the total. `where` names the nodes in the message (default: the cluster).
    """
    # the cluster may grow: only its maximum size bounds the run (loosely: one node)
    if autoscale_max is not None:
        now = {key: sum(n.get(key, 0.0) for n in nodes) for key in ("CPU", "GPU")}
        nodes = [{key: max(float(autoscale_max.get(key, 0.0)), now[key]) for key in ("CPU", "GPU")}]
        where = where or "the autoscaler's maximum"
    else:
        where = where or "the cluster (no autoscaler)"
    largest = {key: max((n.get(key, 0.0) for n in nodes), default=0.0) for key in ("CPU", "GPU")}
    total = {key: sum(n.get(key, 0.0) for n in nodes) for key in ("CPU", "GPU")}
    for d in demands:
        for key, need in (("GPU", d.gpus), ("CPU", d.cpus)):
            if need > largest[key]:
                option = f"{_section(d.role)}.num_{key.lower()}s"
                if key == "GPU" and largest[key] == 0:
                    return (f"{option}={_fmt(need)}: {d.role} needs {_fmt(need)} GPU per actor, but {where} "
                            "has no GPU")
                return (f"{option}={_fmt(need)}: {d.role} needs {_fmt(need)} {key} per actor, but {where} "
                        f"offers at most {_fmt(largest[key])} per node")
    for key in ("GPU", "CPU"):
        needed = sum(d.count * (d.gpus if key == "GPU" else d.cpus) for d in demands)
        if needed > total[key] + 1e-9:
            parts = " + ".join(f"{d.role} {d.count} × {_fmt(d.gpus if key == 'GPU' else d.cpus)}"
                               for d in demands if (d.gpus if key == "GPU" else d.cpus) > 0)
            biggest = max(demands, key=lambda d: d.count * (d.gpus if key == "GPU" else d.cpus))
            return (f"the run needs {_fmt(needed)} {key}s ({parts}), but {where} has {_fmt(total[key])} "
                    f"in total; lower {_field(biggest.role)} ({biggest.count}) or the per-actor "
                    f"{_section(biggest.role)}.num_{key.lower()}s")
    return None


PROCESSES_PER_CORE = 4
"""More actor processes than this per CPU core on one machine: each spends its time waiting for a core (every
rank and worker imports torch and builds its model at once), and a run looks hung for minutes."""


def oversubscribed(demands: list[Demand], cores: int, per_core: int = PROCESSES_PER_CORE) -> str | None:
    """Why a local run has too many processes for `cores` (naming the largest role's field), or None."""
    total = sum(d.count for d in demands)
    if total <= per_core * cores:
        return None
    largest = max(demands, key=lambda d: d.count)
    return (f"{_field(largest.role)}={largest.count}: the run starts {total} actor processes "
            f"({', '.join(f'{d.role} {d.count}' for d in demands if d.count)}) on a machine with {cores} CPU "
            f"cores, more than {per_core} per core; lower it, or set train.oversubscribe=true to run anyway")

