"""Throughput of the whole loop, per stage, side by side in one run (this machine is shared: compare ratios).

    python benchmarks/throughput.py --steps 12 --out throughput.json [section.field=value ...]

Runs the quickstart loop once per variant (default: synchronous, and async with max_staleness=1) on the same
local Ray cluster, skips the first `--warmup` steps (actor start, JIT), and prints mean seconds per stage
(generate, score, train, sync — as the driver waits for them), samples/s, tokens/s, and each variant's speed
relative to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

STAGES = ("generate_s", "reward_s", "train_s", "sync_s")
VARIANTS = {"sync": [], "async(staleness=1)": ["train.max_staleness=1"]}


def run_variant(overrides: list[str], steps: int, run_dir: Path) -> list[dict]:
    from alignray.config import load_config
    from alignray.driver.controller import Controller

    cfg = load_config(None, [f"train.steps={steps}", "train.progress=false", "train.save_rollouts=false",
                             *overrides])
    controller = Controller(cfg, run_dir)
    try:
        return controller.run()
    finally:
        controller.close()


def summarise(history: list[dict], warmup: int) -> dict:
    rows = history[warmup:] or history
    wall = sum(sum(m[f"timing/{s}"] for s in STAGES) for m in rows)
    out = {f"{s}": statistics.mean(m[f"timing/{s}"] for m in rows) for s in STAGES}
    out.update({
        "step_s": wall / len(rows),
        "samples_per_s": sum(m["samples"] for m in rows) / wall,
        "tokens_per_s": sum(m["samples"] * m["response_length/mean"] for m in rows) / wall,
        "generate_tokens_per_s": statistics.mean(m["throughput/generate_tokens_per_s"] for m in rows),
        "steps_measured": len(rows),
        "reward_first": history[0]["reward/mean"], "reward_last": history[-1]["reward/mean"],
    })
    return out


def table(results: dict[str, dict]) -> str:
    base = next(iter(results.values()))
    head = (f"{'variant':<20}{'generate s':>11}{'score s':>9}{'train s':>9}{'sync s':>9}{'step s':>9}"
            f"{'samples/s':>11}{'tokens/s':>10}{'gen tok/s':>11}{'speed×':>8}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<20}{r['generate_s']:>11.3f}{r['reward_s']:>9.3f}{r['train_s']:>9.3f}"
                     f"{r['sync_s']:>9.3f}{r['step_s']:>9.3f}{r['samples_per_s']:>11.1f}{r['tokens_per_s']:>10.0f}"
                     f"{r['generate_tokens_per_s']:>11.0f}{r['samples_per_s'] / base['samples_per_s']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="throughput.json")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("overrides", nargs="*",
                        help="applied to every variant, e.g. rollout.max_new_tokens=64")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            history = run_variant(VARIANTS[name] + args.overrides, args.steps, Path(tmp) / name.split("(")[0])
            results[name] = summarise(history, args.warmup)
    print(table(results))
    Path(args.out).write_text(json.dumps({"steps": args.steps, "warmup": args.warmup,
                                          "overrides": args.overrides, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
