"""The Ray cluster a driver runs on: `connect_ray` (both drivers, `alignray train` and `alignray rm train`,
join or start it here), and what it can ever provide, checked once before any placement group is created."""

from __future__ import annotations

import json
import os
import signal
import sys

import ray

from alignray.config import Config
from alignray.driver.capacity import Demand, demands_of, infeasible, oversubscribed
from alignray.errors import AlignrayError
from alignray.quiet import SETUP_HOOK, verbose


def _started_here() -> bool:
    """This driver started its own local Ray (`ray.init(address="local")`): no autoscaler can exist."""
    node = getattr(ray._private.worker, "_global_node", None)
    return node is not None and bool(getattr(node, "head", False))


def _autoscaler() -> tuple[bool, dict[str, float] | None]:
    """(may the cluster grow?, the most of each resource it could reach, if the autoscaler says)."""
    if _started_here():
        return False, None
    try:  # autoscaler v2 publishes its node groups; their sum is the cluster's maximum size
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config()
        if most:
            return True, {k: float(v) for k, v in most.items()}
        from ray.experimental.internal_kv import _internal_kv_get

        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
        mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
        if mapping and all(v == f"node_{k}" for k, v in mapping.items()):
            return False, None  # a read-only provider: a fixed set of nodes (`ray start` by hand)
    except Exception:  # noqa: BLE001 - internal APIs; not knowing means "it may grow", never a false error
        pass
    return True, None


def check_local_capacity(cfg: Config, address: str | None) -> None:
    """Before anything heavy loads (torch, models, Ray itself): a run that will start its own local Ray asks
    for GPUs this machine does not have. CPUs never fall short there: the local Ray is sized to the run."""
    if address or ray.is_initialized():
        return
    from ray._private.accelerators import get_accelerator_manager_for_resource

    manager = get_accelerator_manager_for_resource("GPU")
    gpus = manager.get_current_node_num_accelerators()
    visible = manager.get_current_process_visible_accelerator_ids()
    if visible is not None:
        gpus = min(gpus, len(visible))
    demands = demands_of(cfg)
    check_local_processes(demands, cfg.train.oversubscribe, "train.oversubscribe")
    machine = {"CPU": sum(d.count * d.cpus for d in demands), "GPU": float(gpus)}
    problem = infeasible(demands, [machine], where="this machine (a local Ray, no cluster address)")
    if problem:
        raise AlignrayError(f"cannot place the run: {problem}")


def check_local_processes(demands: list[Demand], allowed: bool, field: str) -> None:
    """A local run with more actor processes than the machine's cores can carry (`capacity.oversubscribed`)
    is one clean error before anything starts, unless `field` (set true) insists."""
    crowded = None if allowed else oversubscribed(demands, os.cpu_count() or 1)
    if crowded:
        crowded = crowded.replace("train.oversubscribe", field)
        raise AlignrayError(f"too many processes for this machine: {crowded}")


def check_capacity(cfg: Config) -> None:
    """Fail at once, naming role and numbers, when the run can never be placed; with an autoscaler, say it
    waits."""
    check_demands(demands_of(cfg))


def check_demands(demands: list[Demand]) -> None:
    """`check_capacity` for any list of role demands (the RL run's, or `rm train`'s ranks)."""
    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    grows, most = _autoscaler()
    if not grows or most is not None:
        problem = infeasible(demands, nodes, most if grows else None)
        if problem:
            raise AlignrayError(f"cannot place the run: {problem}")
    if grows:
        now = infeasible(demands, nodes, None)
        if now:
            print(f"alignray: waiting for the autoscaler (up to the placement timeout): {now}",
                  file=sys.stderr)


def connect_ray(address: str | None, num_cpus: float) -> None:
    """An existing cluster (`address`, else RAY_ADDRESS, e.g. `auto`), else a new local Ray on loopback."""
    if ray.is_initialized():
        return
    # Results of calls to actors that died are abandoned on purpose (the fault is reported once, as a warning
    # line); Ray would print each one's remote traceback when it is garbage-collected.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("DS_ACCELERATOR"):
        env_vars["DS_ACCELERATOR"] = os.environ["DS_ACCELERATOR"]
    # known warnings filtered in workers
    env = {"env_vars": env_vars, "worker_process_setup_hook": SETUP_HOOK}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=verbose())
    else:
        # No prestarted idle workers: every process of a run is an actor with its own placement, so the
        # raylet's default of one idle Python worker per CPU only adds processes competing for the CPU while
        # the actors boot.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(num_cpus + 0.999)),
                 include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=env,
                 configure_logging=True, logging_level="WARNING", log_to_driver=verbose(),
                 _system_config={"enable_worker_prestart": False})
    # Ray's core installs its own SIGINT/SIGTERM handlers (a stack dump, then exit): the driver's own come
    # back (alignray.driver.stop: one line, actors closed, exit 130/143)
    for sig, handler in handlers.items():
        if callable(handler):
            signal.signal(sig, handler)
