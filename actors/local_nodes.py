"""Several Ray nodes on this one machine, all on loopback: a head and worker raylets
(`ray.cluster_utils.Cluster`). For tests and benchmarks of what happens when nodes join or leave a run
(`cluster.add_node`, `cluster.remove_node`).
"""

from __future__ import annotations

import ray
import ray._private.ray_constants as ray_constants
from ray.cluster_utils import Cluster

# A lost node is declared dead after ~2 s instead of Ray's default ~30 s, so a test waits on recovery, not
# detection.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_failure_threshold": 4}


def start_local_nodes(worker_cpus: list[float], head_cpus: float = 0, runtime_env: dict | None = None
                      ) -> tuple[Cluster, list]:
    """A head with `head_cpus` (it hosts the driver) and one worker node per entry of `worker_cpus`; the
    driver is connected. Returns the cluster and the worker nodes (pass one to `cluster.remove_node` to lose
    it)."""
    ray_constants.ENABLE_RAY_CLUSTER = False  # keep 127.0.0.1 as it is (see alignray.actors.control.connect)
    loopback = {"node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": False, "_system_config": FAST_NODE_DEATH, **loopback})
    nodes = [cluster.add_node(num_cpus=cpus, **loopback) for cpus in worker_cpus]
    ray.init(address=cluster.address, runtime_env=runtime_env, logging_level="WARNING")
    return cluster, nodes
