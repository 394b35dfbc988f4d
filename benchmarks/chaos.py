"""Chaos run: the same seeded run twice — undisturbed, then with `kill -9` of actor processes at Poisson-timed
moments (victims drawn over rollout, reward and learner processes), optionally losing a Ray node that hosts a
rollout worker — then the run invariants (alignray.driver.invariants), a table and JSON. Exits non-zero if any
invariant fails.

  python benchmarks/chaos.py --steps 60 --kills 20 --out chaos.json    # 2 rollout + 2 reward workers
  python benchmarks/chaos.py --steps 30 --kills 6 --remove-node-at 10  # also lose a node (multi-node local)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import ray

from alignray.actors.chaos import ChaosMonkey
from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.driver.invariants import check_invariants
from alignray.driver.runlog import read_metrics

os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # abandoned refs of dead actors: reported as faults
ENV = {"env_vars": {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
                    "TOKENIZERS_PARALLELISM": "false"}}


def overrides(args) -> list[str]:
    return [f"train.steps={args.steps}", "rollout.num_workers=2", "reward.num_workers=2",
            "rollout.num_cpus=0.5",
            "reward.num_cpus=0.5", f"train.snapshot_interval={args.snapshot_interval}",
            "train.max_restarts=100", "train.progress=false", f"train.seed={args.seed}", *args.overrides]


def one_run(args, run_dir: Path, kills: int, node_step: int | None, cluster=None, nodes=()) -> dict:
    cfg = load_config(None, overrides(args))
    t0 = time.perf_counter()
    controller = Controller(cfg, run_dir)
    monkey = ChaosMonkey(controller, seed=args.seed, mean_interval_s=args.mean_interval, max_kills=kills) \
        if kills else None
    removed: list[str] = []

    def on_step(metrics: dict) -> None:
        # the clock starts once the run is up: kills land between steps 1 and N
        if monkey and metrics["step"] == 1:
            monkey.start()
        maybe_remove_node(metrics)

    def maybe_remove_node(metrics: dict) -> None:
        if node_step is None or removed or metrics["step"] != node_step:
            return
        member = next(iter(controller.rollout.members.values()))
        node_id = ray.util.placement_group_table(member.pg)["bundles_to_node_id"][0]
        victim = [n for n in nodes if n.node_id == node_id]
        if victim:
            removed.append(node_id)
            threading.Thread(target=cluster.remove_node, args=(victim[0],), kwargs={"allow_graceful": False},
                             daemon=True).start()

    try:
        history = controller.run(on_step=on_step)
    finally:
        done = monkey.stop() if monkey else []
        controller.close()
    ids = controller.prompts.table.column("prompt_id").to_pylist()
    invariants = check_invariants(cfg, read_metrics(run_dir), pq.read_table(run_dir / "rollouts"), ids)
    last, k = history[-1], max(1, len(history) // 8)
    return {
        "wall_s": time.perf_counter() - t0,
        "kills": dict(Counter(kill.role for kill in done)),
        "kills_total": len(done),
        "node_removed": bool(removed),
        "restarts": {role: last[f"fault/restarts/{role}"] for role in ("rollout", "reward", "learner")},
        "requeued": last["fault/requeued"], "rescored": last["fault/rescored"],
        "steps_retrained": last["fault/steps_retrained"],
        "reward_first": sum(m["reward/mean"] for m in history[:k]) / k,
        "reward_last": sum(m["reward/mean"] for m in history[-k:]) / k,
        "invariants": {name: (problem or "ok") for name, problem in invariants.items()},
    }


def start_ray(args):
    """A local Ray; with --remove-node-at, a head plus three 4-CPU worker nodes on loopback
    (ray.cluster_utils)."""
    if args.remove_node_at is None:
        ray.init(address="local", num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env=ENV, logging_level="WARNING", log_to_driver=False)
        return None, []
    from alignray.actors.local_nodes import start_local_nodes

    cluster, nodes = start_local_nodes([4, 4, 4], runtime_env=ENV)
    return cluster, nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mean-interval", type=float, default=6.0,
                        help="mean seconds between kills (Poisson)")
    parser.add_argument("--snapshot-interval", type=int, default=5)
    parser.add_argument("--remove-node-at", type=int,
                        help="lose the node of a rollout worker after this step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="chaos.json")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = parser.parse_args()
    cluster, nodes = start_ray(args)
    root = Path(tempfile.mkdtemp(prefix="alignray-chaos-"))
    results = {"undisturbed": one_run(args, root / "undisturbed", 0, None),
               "chaos": one_run(args, root / "chaos", args.kills, args.remove_node_at, cluster, nodes)}
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    rows = [("kills (rollout/reward/learner)", lambda r: "/".join(str(r["kills"].get(x, 0))
                                                                    for x in ("rollout", "reward",
                                                                              "learner"))),
            ("node removed", lambda r: r["node_removed"]),
            ("restarts (rollout/reward/learner)", lambda r: "/".join(str(v) for v in r["restarts"].values())),
            ("prompts requeued", lambda r: r["requeued"]), ("batches re-scored", lambda r: r["rescored"]),
            ("steps re-trained", lambda r: r["steps_retrained"]),
            ("reward first → last 1/8", lambda r: f"{r['reward_first']:.3f} → {r['reward_last']:.3f}"),
            ("wall s", lambda r: f"{r['wall_s']:.0f}")]
    rows += [(f"invariant {name}", lambda r,
              n=name: r["invariants"][n]) for name in results["chaos"]["invariants"]]
    print(f"| {args.steps} steps, seed {args.seed} | undisturbed | chaos |\n|---|---|---|")
    for label, cell in rows:
        print(f"| {label} | {cell(results['undisturbed'])} | {cell(results['chaos'])} |")
    Path(args.out).write_text(json.dumps({"args": vars(args), **results}, indent=2) + "\n")
    print(f"wrote {args.out}; run directories under {root}")
    broken = [n for r in results.values() for n, v in r["invariants"].items() if v != "ok"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
