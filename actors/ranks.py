"""DeepSpeed ranks as Ray actors, for both learners (the RL `LearnerWorker` and the reward model's
`RewardLearner`).

Rank side: `prepare_rank` (threads, CPU accelerator), `rank_address` (rank 0 hosts the rendezvous),
`init_process_group` (the env DeepSpeed expects, then its process group) and `deepspeed_config` (the one
DeepSpeed config both learners use). Driver side: `RankGroup` reserves one placement group of N bundles,
starts one actor per bundle and has them rendezvous (`address` on rank 0, then `setup(addr, port)` on every
rank); every later call goes to all ranks through `actors.calls.wait_calls`, and any rank's failure is the
group's (`ActorFault(role, ...)`).

A rank actor is built as `cls(cfg_dict, rank, world)` and has `address()` and `setup(master_addr,
master_port)`.
"""

from __future__ import annotations

import os
import socket

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from alignray.actors.calls import DIED, ActorFault, classify, first_line, kill, wait_calls
from alignray.actors.watchdog import WATCHDOG
from alignray.errors import AlignrayError

PLACEMENT_TIMEOUT_S = 120
STARTUP_CALLS = ("address", "setup", "load")
"""Calls that build or load a model: watched with the start-up report delay (actors.watchdog)."""
PROBE_TIMEOUT_S = 10.0
"""How long a rank may take to answer a liveness probe once a peer's call has failed."""


# ---- rank side ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_rank(torch_threads: int, num_gpus: float) -> bool:
    """Per-rank process setup; returns whether this rank uses a GPU."""
    import torch

    torch.set_num_threads(torch_threads)
    use_gpu = num_gpus > 0 and torch.cuda.is_available()
    if not use_gpu and not os.environ.get("DS_ACCELERATOR"):  # unset or empty (DeepSpeed refuses "")
        os.environ["DS_ACCELERATOR"] = "cpu"
    return use_gpu


def rank_address() -> tuple[str, int]:
    """Where rank 0 hosts the process-group rendezvous: this node's IP and a free port."""
    return ray.util.get_node_ip_address(), free_port()


def init_process_group(rank: int, world: int, master_addr: str, master_port: int, backend: str,
                       use_gpu: bool) -> None:
    """The env DeepSpeed expects (it otherwise tries MPI discovery), then its process group (gloo on CPU)."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank), LOCAL_RANK="0",
                      WORLD_SIZE=str(world))
    import deepspeed

    if backend == "auto":
        backend = "nccl" if use_gpu else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def deepspeed_config(micro_batch_size: int, world_size: int, grad_clip: float, zero_stage: int,
                     dtype: str = "float32") -> dict:
    """The DeepSpeed config of both learners: one micro-batch per rank per optimizer step (no
    accumulation)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch_size * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
    }


# ---- driver side -------------------------------------------------------------------------------------------
def reserve(role: str, bundles: int, cpus: float, gpus: float, strategy: str = "PACK") -> PlacementGroup:
    """A placement group of `bundles` × {CPU: cpus, GPU: gpus}; a clear error if the cluster cannot hold
    it."""
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    pg = placement_group([dict(resources) for _ in range(bundles)], strategy=strategy,
                         name=f"alignray-{role}")
    if not pg.wait(PLACEMENT_TIMEOUT_S):
        remove_placement_group(pg)
        raise AlignrayError(f"cannot place {role}: {bundles} × {resources} did not fit in "
                            f"{PLACEMENT_TIMEOUT_S}s; cluster has {ray.available_resources()} available")
    return pg


def in_group(pg: PlacementGroup, index: int, cpus: float, gpus: float) -> dict:
    return {"num_cpus": cpus, "num_gpus": gpus, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=index)}


class RankGroup:
    """`num_ranks` actors of `actor_cls` in one placement group, joined in one process group. `setup_results`
    holds every rank's `setup` answer, in rank order. `options`: extra actor options (e.g.
    max_concurrency)."""

    def __init__(self, role: str, actor_cls, cfg_dict: dict, num_ranks: int, cpus: float, gpus: float,
                 start_timeout: float, **options):
        self.role = role
        self.pg = reserve(role, num_ranks, cpus, gpus)
        self.ranks = [actor_cls.options(**in_group(self.pg, r, cpus, gpus), **options).remote(cfg_dict, r,
                                                                                              num_ranks)
                      for r in range(num_ranks)]
        try:
            addr, port = self.call_rank0("address", start_timeout)
            self.setup_results = self.call_all("setup", start_timeout, addr, port)
        except BaseException:
            self.close()
            raise

    def names(self) -> list[str]:
        return [f"{self.role}-{r}" for r in range(len(self.ranks))]

    def call_all(self, method: str, timeout: float, *args) -> list:
        """`method(*args)` on every rank; the ranks' results in rank order, or `ActorFault(role, ...)`."""
        calls = {name: WATCHDOG.launch(self.role, name, w, method, *args, startup=method in STARTUP_CALLS)
                 for name, w in zip(self.names(), self.ranks, strict=True)}
        try:
            results, faults = wait_calls(calls, timeout, stop_on_fault=True)
        except AlignrayError:
            raise
        except Exception as exc:  # noqa: BLE001 - a rank's own error: a broken collective when a peer is gone
            dead = self.dead_peer()
            if dead is None:
                raise
            raise ActorFault(self.role, dead.cause,
                             f"{dead.actor} during {method}: {dead.detail} (then a surviving "
                             f"rank failed: {first_line(getattr(exc, 'cause', None) or exc)})") from None
        if faults:
            name, fault = next(iter(faults.items()))
            raise ActorFault(self.role, fault.cause, f"{name} during {method}: {fault.detail}")
        return [results[name] for name in self.names()]

    def fault_behind(self, name: str, exc: BaseException) -> ActorFault:
        """The fault behind rank `name`'s failed call: its own (died, hung, ...), or, when the rank raised an
        error of its own while a peer is gone (a collective broken by the peer's death), the peer's. A user
        error or a bug with every rank alive is raised as is."""
        try:
            return classify(name, exc)
        except AlignrayError:
            raise
        except Exception:  # noqa: BLE001 - not a fault of this rank: look for the peer that broke the collective
            dead = self.dead_peer()
            if dead is None:
                raise
            return ActorFault(dead.actor, dead.cause,
                              f"{dead.detail} (then {name} failed: "
                              f"{first_line(getattr(exc, 'cause', None) or exc)})")

    def dead_peer(self) -> ActorFault | None:
        """The first rank that does not answer a liveness probe: died, its node died, or hung."""
        for name, rank in zip(self.names(), self.ranks, strict=True):
            try:
                ray.get(rank.__ray_ready__.remote(), timeout=PROBE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - classified below; a bug in a probe is itself a fault
                try:
                    return classify(name, exc)
                except Exception:  # noqa: BLE001
                    return ActorFault(name, DIED, first_line(exc))
        return None

    def call_rank0(self, method: str, timeout: float, *args):
        name = self.names()[0]
        ref = WATCHDOG.launch(self.role, name, self.ranks[0], method, *args, startup=method in STARTUP_CALLS)
        results, faults = wait_calls({name: ref}, timeout)
        if faults:
            raise ActorFault(self.role, faults[name].cause, f"{name} during {method}")
        return results[name]

    def close(self) -> None:
        for actor in self.ranks:
            kill(actor)
        try:
            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - its node may be gone
            pass
