"""Elastic pools while a run goes on, driven as a user would: `alignray scale` / `alignray status` from
another process; requests the cluster cannot place wait (pending) instead of failing the run; the autoscaling
rule grows the pool onto a node that joins mid-run and shrinks an idle one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import WORKER_ENV, start_local_ray, tiny_overrides

from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics

pytestmark = pytest.mark.slow


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`alignray ...` in its own process, as from another terminal."""
    return subprocess.run([sys.executable, "-m", "alignray.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def run(cfg, controller: Controller, on_step) -> list[dict]:
    try:
        history = controller.run(on_step=on_step)
    finally:
        controller.close()
    ids = controller.prompts.table.column("prompt_id").to_pylist()
    problems = check_invariants(cfg, read_metrics(controller.run_dir),
                                pq.read_table(controller.run_dir / "rollouts"), ids)
    assert not any(problems.values()), problems
    return history


def test_scale_beyond_capacity_waits_and_a_smaller_request_cancels(ray_cluster, tmp_path):
    """8 logical CPUs, 4 taken: `scale --rollout 8` places 4 more members and leaves 3 pending, the run goes
    on; `status` shows them; `scale --rollout 2` cancels the pending ones and shrinks the pool."""
    cfg = load_config(None, tiny_overrides(**{"train.steps": 5, "train.prompts_per_step": 8}))
    controller = Controller(cfg, tmp_path / "run")
    seen: dict[int, str] = {}

    def user(metrics: dict) -> None:
        if metrics["step"] == 1:
            assert cli("scale", str(tmp_path / "run"), "--rollout", "8").returncode == 0
        if metrics["step"] == 3:
            seen[3] = cli("status", str(tmp_path / "run")).stdout
            assert cli("scale", str(tmp_path / "run"), "--rollout", "2").returncode == 0

    history = run(cfg, controller, user)
    assert [m["rollout/pending"] for m in history] == [0, 3, 3, 0, 0]
    assert [m["rollout/workers"] for m in history][1:3] == [5, 5] and history[-1]["rollout/workers"] == 2
    assert "rollout: target 8" in seen[3] and seen[3].count("pending") == 3
    status = json.loads(cli("status", str(tmp_path / "run"), "--json").stdout)
    assert status["step"] == 5 and status["pools"]["rollout"]["target"] == 2


def test_scale_and_status_through_the_control_actor(ray_cluster, tmp_path):
    """With a Ray address the commands find the run's named control actor (the way in for a run on a
    cluster)."""
    import ray

    cfg = load_config(None, tiny_overrides(**{"train.steps": 4, "rollout.num_cpus": 0.5}))
    controller = Controller(cfg, tmp_path / "remote")
    address = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    out: dict[str, subprocess.CompletedProcess] = {}

    def user(metrics: dict) -> None:
        if metrics["step"] == 1:
            out["scale"] = cli("scale", str(tmp_path / "remote"), "--rollout", "2", env=address)
        if metrics["step"] == 3:
            out["status"] = cli("status", str(tmp_path / "remote"), "--json", env=address)

    history = run(cfg, controller, user)
    assert out["scale"].returncode == 0, out["scale"].stderr
    assert history[-1]["rollout/workers"] == 2
    status = json.loads(out["status"].stdout)
    assert status["step"] == 3 and status["pools"]["rollout"]["target"] == 2


def test_autoscale_shrinks_an_idle_pool(ray_cluster, tmp_path):
    """Rule thresholds that always see the pool as idle (share ≤ 0.98, never ≥ 0.99): 3 members shrink to
    1."""
    cfg = load_config(None, tiny_overrides(**{
        "train.steps": 4, "rollout.num_workers": 3, "rollout.num_cpus": 0.5,
        "rollout.autoscale": "{min: 1, max: 3, grow_above: 0.99, shrink_below: 0.98, window: 1}"}))
    history = run(cfg, Controller(cfg, tmp_path / "idle"), None)
    assert history[0]["rollout/workers"] == 3 and history[-1]["rollout/workers"] == 1


@pytest.fixture
def one_node():
    """A head with no CPUs and one 4-CPU worker node; the suite's cluster is restored afterwards."""
    import ray

    from alignray.actors.local_nodes import start_local_nodes

    ray.shutdown()
    cluster, nodes = start_local_nodes([4], runtime_env=WORKER_ENV)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        start_local_ray()


def test_autoscale_grows_onto_a_node_that_joins_mid_run(one_node, tmp_path):
    """Generation always weighs on the step (share ≥ 0.01), so the rule asks for 3 rollout members; the first
    node holds 1 of them (learners 2 + reward 0.5 + rollout 1 of 4 CPUs), the others wait pending until a
    second node joins after step 2, then start on it."""
    import ray

    cfg = load_config(None, tiny_overrides(**{
        "train.steps": 10, "reward.num_cpus": 0.5,
        "rollout.autoscale": "{min: 1, max: 3, grow_above: 0.01, shrink_below: 0.0, window: 1}"}))
    controller = Controller(cfg, tmp_path / "grow")
    joined: list[str] = []

    def add_node(metrics: dict) -> None:
        if metrics["step"] == 2:
            joined.append(one_node.add_node(num_cpus=4, node_ip_address="127.0.0.1").node_id)
            # Let time pass as it would on a cluster: Ray places the pending groups on the new node, and the
            # pool (reconciled between steps) starts their members; then they take work like any other.
            pending = [m.placed for m in controller.rollout.members.values() if m.state == "pending"]
            ray.wait(pending, num_returns=len(pending), timeout=120, fetch_local=False)
            controller.rollout.wait_ready()

    placed = {}

    def watch(metrics: dict) -> None:
        add_node(metrics)
        for name, member in controller.rollout.members.items():
            if member.state == "ready":
                placed[name] = ray.util.placement_group_table(member.pg)["bundles_to_node_id"][0]

    history = run(cfg, controller, watch)
    assert max(m["rollout/pending"] for m in history[:2]) >= 1  # the rule asked before there was room
    assert history[-1]["rollout/workers"] == 3 and history[-1]["rollout/pending"] == 0
    assert joined[0] in placed.values()
