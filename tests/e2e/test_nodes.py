"""Several Ray nodes on this machine (`ray.cluster_utils.Cluster`: a head and worker raylets on loopback). The
node that hosts a rollout worker is removed — its processes killed, as when a machine is lost — mid-run; the
run goes on.
"""

from __future__ import annotations

import random
import threading
import time

import pyarrow.parquet as pq
import pytest
from conftest import WORKER_ENV, start_local_ray, tiny_overrides

from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics

pytestmark = pytest.mark.slow

@pytest.fixture
def nodes():
    """A head with no CPUs (it hosts the driver and the recorder) and two 4-CPU worker nodes; the suite's
    one-node cluster is restored afterwards."""
    import ray

    from alignray.actors.local_nodes import start_local_nodes

    ray.shutdown()
    cluster, workers = start_local_nodes([4, 4], runtime_env=WORKER_ENV)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        start_local_ray()


def test_losing_the_node_of_a_rollout_worker_mid_run(nodes, tmp_path):
    import ray

    cluster, workers = nodes
    cfg = load_config(None, tiny_overrides(**{"train.steps": 8, "rollout.num_workers": 2,
                                              "rollout.num_cpus": 0.5,
                                              "reward.num_cpus": 0.5, "train.snapshot_interval": 2}))
    controller = Controller(cfg, tmp_path / "run")
    removed: list[str] = []

    def remove_a_rollout_node(metrics: dict) -> None:
        if metrics["step"] != 2 or removed:
            return
        hosts = [ray.util.placement_group_table(m.pg)["bundles_to_node_id"][0]
                 for m in controller.rollout.members.values()]
        assert len(set(hosts)) == 2  # the pool spreads its members over the nodes
        node_id = hosts[0]
        (victim,) = [w for w in workers if w.node_id == node_id]
        removed.append(node_id)
        delay = random.Random(5).uniform(0.0, 0.5)  # lands somewhere in step 3
        threading.Thread(target=lambda: (time.sleep(delay), cluster.remove_node(victim,
                                                                                allow_graceful=False)),
                         daemon=True).start()

    try:
        history = controller.run(on_step=remove_a_rollout_node)
    finally:
        controller.close()
    assert removed and len(history) >= 8
    ids = controller.prompts.table.column("prompt_id").to_pylist()
    problems = check_invariants(cfg, read_metrics(tmp_path / "run"),
                                pq.read_table(tmp_path / "run" / "rollouts"), ids)
    assert not any(problems.values()), problems
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert "rollout" in events
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert removed[0] not in alive
