"""The feasibility rule, by hand-made node lists: a run the cluster can never hold is named, role and
numbers."""

from __future__ import annotations

from alignray.config import load_config
from alignray.driver.capacity import Demand, demands_of, infeasible

CPU_NODE = {"CPU": 8.0, "memory": 1e10}
GPU_NODE = {"CPU": 16.0, "GPU": 2.0}


def quickstart(**kw) -> list[Demand]:
    return demands_of(load_config(None, [f"{k}={v}" for k, v in kw.items()]))


def test_quickstart_fits_one_cpu_node():
    assert quickstart() == [Demand("learner", 2, 1.0, 0.0), Demand("rollout", 1, 1.0, 0.0),
                            Demand("reward", 1, 1.0, 0.0)]
    assert infeasible(quickstart(), [CPU_NODE]) is None


def test_gpu_asked_of_a_cpu_only_cluster():
    msg = infeasible(quickstart(**{"rollout.num_gpus": 1}), [CPU_NODE, CPU_NODE])
    assert msg == ("rollout.num_gpus=1: rollout needs 1 GPU per actor, but the cluster (no autoscaler) "
                   "has no GPU")


def test_bundle_larger_than_any_node():
    msg = infeasible(quickstart(**{"learner.num_gpus": 4}), [GPU_NODE, GPU_NODE])
    assert msg == ("learner.num_gpus=4: learner needs 4 GPU per actor, but the cluster (no autoscaler) "
                   "offers at most 2 per node")
    msg = infeasible(quickstart(**{"reward.num_cpus": 12}), [CPU_NODE, CPU_NODE])
    assert (msg.startswith("reward.num_cpus=12: reward needs 12 CPU per actor")
            and msg.endswith("offers at most 8 per node"))


def test_more_ranks_than_the_cluster_has_cpus():
    msg = infeasible(quickstart(**{"learner.num_ranks": 64}), [CPU_NODE, CPU_NODE])
    assert msg == ("the run needs 66 CPUs (learner 64 × 1 + rollout 1 × 1 + reward 1 × 1), but the cluster "
                   "(no autoscaler) has 16 in total; lower learner.num_ranks (64) or the per-actor "
                   "learner.num_cpus")


def test_gpus_summed_over_roles_and_nodes():
    demands = quickstart(**{"learner.num_gpus": 1, "learner.num_ranks": 3, "rollout.num_gpus": 1,
                            "rollout.num_workers": 2})
    assert infeasible(demands, [GPU_NODE, GPU_NODE, GPU_NODE]) is None  # 5 of 6 GPUs
    msg = infeasible(demands, [GPU_NODE, GPU_NODE])
    assert msg.startswith("the run needs 5 GPUs (learner 3 × 1 + rollout 2 × 1), but the cluster "
                          "(no autoscaler) has 4 in total")


def test_an_autoscaler_bounds_by_its_maximum_not_by_the_nodes_now():
    demands = quickstart(**{"rollout.num_gpus": 1})
    # a wait, not an error
    assert infeasible(demands, [CPU_NODE], autoscale_max={"CPU": 64, "GPU": 8}) is None
    msg = infeasible(demands, [CPU_NODE], autoscale_max={"CPU": 64})
    assert msg.endswith("but the autoscaler's maximum has no GPU")
    msg = infeasible(quickstart(**{"learner.num_ranks": 100}), [CPU_NODE], autoscale_max={"CPU": 64})
    assert "needs 102 CPUs" in msg and "the autoscaler's maximum has 64 in total" in msg


def test_fractional_requests():
    demands = [Demand("rollout", 4, 0.5, 0.25)]
    assert infeasible(demands, [{"CPU": 2.0, "GPU": 1.0}]) is None
    assert "needs 1.25 GPUs" in infeasible([Demand("rollout", 5, 0.5, 0.25)], [{"CPU": 4.0, "GPU": 1.0}])


def test_oversubscription_names_the_largest_role_and_the_limit():
    from alignray.driver.capacity import oversubscribed

    assert oversubscribed(quickstart(), cores=1) is None  # 4 processes on 1 core: at the limit
    msg = oversubscribed(quickstart(**{"learner.num_ranks": 64}), cores=2)
    assert msg == ("learner.num_ranks=64: the run starts 66 actor processes (learner 64, rollout 1, "
                   "reward 1) on a machine with 2 CPU cores, more than 4 per core; lower it, or set "
                   "train.oversubscribe=true to run anyway")
    assert (oversubscribed(quickstart(**{"rollout.num_workers": 9}), cores=2)
            .startswith("rollout.num_workers=9:"))
