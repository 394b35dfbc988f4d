"""Throughput against pool size, on whatever cluster it runs: the quickstart loop with 1..N rollout workers
(and 1..M reward workers), side by side in one process, rounds alternating; steady-state samples/s (the first
steps are dropped) and the share of each step the driver waited on generation / scoring. Table + JSON.

  python benchmarks/scaling.py --rollout 1 2 3 --reward 1 2 --steps 10 --out scaling.json
  RAY_ADDRESS=auto python benchmarks/scaling.py ...        # on a cluster
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import ray

from alignray.actors.cluster import connect_ray
from alignray.config import load_config
from alignray.driver.controller import Controller


def one_run(rollout: int, reward: int, args, root: Path) -> dict:
    cfg = load_config(None, [f"train.steps={args.steps}", f"rollout.num_workers={rollout}",
                             f"reward.num_workers={reward}", f"rollout.num_cpus={args.cpus_per_worker}",
                             f"reward.num_cpus={args.cpus_per_worker}", "train.progress=false",
                             "train.save_rollouts=false", "train.snapshot_interval=0", *args.overrides])
    controller = Controller(cfg, root / f"r{rollout}-w{reward}-{len(list(root.iterdir()))}")
    try:
        history = controller.run()
    finally:
        controller.close()
    steady = history[args.warmup:]
    step_s = [sum(m[f"timing/{k}"] for k in ("generate_s", "reward_s", "train_s", "sync_s")) for m in steady]
    return {"samples_per_s": sum(m["samples"] for m in steady) / sum(step_s),
            "generate_wait_share": sum(m["timing/generate_s"] for m in steady) / sum(step_s),
            "score_wait_share": sum(m["timing/reward_s"] for m in steady) / sum(step_s),
            "workers_used": statistics.mean(m["rollout/workers"] for m in steady)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollout", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--reward", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the steady numbers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--out", default="scaling.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    connect_ray(None, 8)
    shapes = [(n, 1) for n in args.rollout] + [(args.rollout[0], m) for m in args.reward if m != 1]
    root = Path(tempfile.mkdtemp(prefix="alignray-scaling-"))
    runs: dict[str, list[dict]] = {f"{n}x{m}": [] for n, m in shapes}
    for r in range(args.rounds):  # alternate the order each round: drift on a shared machine hits every shape
        for n, m in shapes if r % 2 == 0 else list(reversed(shapes)):
            runs[f"{n}x{m}"].append(one_run(n, m, args, root))
    ray.shutdown()
    base = statistics.mean(x["samples_per_s"] for x in runs[f"{shapes[0][0]}x{shapes[0][1]}"])
    print(f"| rollout × reward workers | samples/s (mean of {args.rounds}) | × vs first | "
          "generate-wait share | score-wait share |\n|---|---|---|---|---|")
    table = {}
    for key, results in runs.items():
        row = {k: statistics.mean(x[k] for x in results) for k in results[0]}
        table[key] = {**row, "rounds": results}
        print(f"| {key} | {row['samples_per_s']:.1f} | {row['samples_per_s'] / base:.2f} | "
              f"{row['generate_wait_share']:.2f} | {row['score_wait_share']:.2f} |")
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": table}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
