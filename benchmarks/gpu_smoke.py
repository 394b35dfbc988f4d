"""One bounded pass of what a GPU user runs, as a table and JSON: `python benchmarks/gpu_smoke.py --out F
[--cases a,b] [--budget-s S] [--work-dir DIR]`.

Cases, in this order (each a subprocess under coreutils `timeout`, with its own limit, and all under one total
budget, 360 s by default on a GPU: a case that would not fit is recorded as skipped):

    cuda-ipc               the CUDA IPC weight transport between two processes (its unit test, run by pytest)
    quickstart-colocated   `alignray train train.colocate=true learner.num_ranks=1 learner.num_gpus=1`
    quickstart-separate    `alignray train learner.num_ranks=1 learner.num_gpus=0.5 rollout.num_gpus=0.25`
    0.2b-separate          the 0.2B bf16 Llama shape (SHAPE_0_2B) with separate actors, the engine on the GPU
    weight-sync-0.2b       read from 0.2b-separate: the median `timing/sync_s` and GB/s of a 0.2B bf16 update
    0.2b-colocated         the same shape, colocated
    rm-train               `alignray rm train learner.num_ranks=1 learner.num_gpus=1`

Without CUDA the same cases run at tiny sizes on CPU (CUDA-only ones are recorded as skipped), so CI keeps the
script working. Numbers come from each run directory's metrics.jsonl (summary.json for rm-train): medians over
the steps after the first (the first includes warm-up), reward over the first and last fifth of the steps,
`learner/mfu` (see alignray.devices) and the learner's tokens/s. RAY_ADDRESS is dropped: every case starts its
own local Ray. Each case's output is kept in WORK_DIR/CASE.log.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE_0_2B = ["model.dtype=bfloat16", "model.tiny.hidden_size=1024", "model.tiny.intermediate_size=2816",
              "model.tiny.num_hidden_layers=16", "model.tiny.num_attention_heads=16",
              "model.tiny.max_position_embeddings=512", "train.prompts_per_step=64",
              "rollout.samples_per_prompt=8", "rollout.max_new_tokens=128", "learner.micro_batch_size=64",
              "train.snapshot_interval=0", "train.steps=4"]
"""The issue's 0.2B bf16 shape (hidden 1024, 16 layers, 64 prompts × 8 samples × 128 new tokens), 4 steps."""
SHAPE_TINY = ["model.dtype=bfloat16", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=176",
              "model.tiny.num_hidden_layers=2", "model.tiny.num_attention_heads=4",
              "model.tiny.max_position_embeddings=128", "train.prompts_per_step=4",
              "rollout.samples_per_prompt=4", "rollout.max_new_tokens=16", "learner.micro_batch_size=16",
              "train.snapshot_interval=0", "train.steps=2"]
"""Its stand-in on CPU: the same overrides at a size two cores run in seconds."""
QUICK_TINY = ["train.steps=3", "train.prompts_per_step=4", "rollout.samples_per_prompt=2",
              "rollout.max_new_tokens=8"]
COLOCATED = {True: ["train.colocate=true", "learner.num_ranks=1", "learner.num_gpus=1"],
             False: ["train.colocate=true", "learner.num_ranks=1"]}
SEPARATE = {True: ["learner.num_ranks=1", "learner.num_gpus=0.5", "rollout.num_gpus=0.25"],
            False: ["learner.num_ranks=1"]}
ORDER = ("cuda-ipc", "quickstart-colocated", "quickstart-separate", "0.2b-separate", "weight-sync-0.2b",
         "0.2b-colocated", "rm-train")


@dataclass
class Case:
    name: str
    kind: str  # train | rm | pytest | derived
    args: list[str] = field(default_factory=list)
    timeout_s: float = 120.0
    cuda_only: bool = False


def cases(gpu: bool) -> dict[str, Case]:
    """Every case with its overrides and time limit on this kind of machine."""
    quick = [] if gpu else QUICK_TINY
    shape = SHAPE_0_2B if gpu else SHAPE_TINY
    slow = 1.0 if gpu else 3.0  # two shared CPU cores
    common = ["train.progress=false"]
    found = [
        Case("cuda-ipc", "pytest", ["tests/unit/test_transports.py", "-k", "cuda_ipc"], 90, cuda_only=True),
        Case("quickstart-colocated", "train", common + COLOCATED[gpu] + quick, 120 * slow),
        Case("quickstart-separate", "train", common + SEPARATE[gpu] + quick, 120 * slow),
        Case("0.2b-separate", "train", common + shape + SEPARATE[gpu], 170 * slow),
        Case("weight-sync-0.2b", "derived"),
        Case("0.2b-colocated", "train", common + shape + COLOCATED[gpu], 150 * slow),
        Case("rm-train", "rm", ["progress=false", "learner.num_ranks=1"]
             + (["learner.num_gpus=1"] if gpu else ["epochs=1"]), 100 * slow),
    ]
    return {c.name: c for c in found}


def median_after_first(rows: list[dict], key: str) -> float | None:
    """Median of `key` over the steps after the first (all of them when there is one step)."""
    values = [r[key] for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    values = values[1:] if len(values) > 1 else values
    return statistics.median(values) if values else None


def train_numbers(run_dir: Path) -> dict:
    """Steps, reward over the first and last fifth of the steps, medians of the step's timings and
    throughputs."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    rows = [r for r in rows if "reward/mean" in r]
    if not rows:
        return {"steps": 0}
    fifth = max(1, len(rows) // 5)
    out = {"steps": len(rows), "reward_first": statistics.mean(r["reward/mean"] for r in rows[:fifth]),
           "reward_last": statistics.mean(r["reward/mean"] for r in rows[-fifth:])}
    for name, key in (("gen_s", "timing/generate_s"), ("train_s", "timing/train_s"),
                      ("sync_s", "timing/sync_s"),
                      ("samples_per_s", "throughput/samples_per_s"),
                      ("gen_tokens_per_s", "throughput/generate_tokens_per_s"),
                      ("learner_tokens_per_s", "learner/tokens_per_s"), ("mfu", "learner/mfu")):
        out[name] = median_after_first(rows, key)
    return out


def weights_gb(overrides: list[str]) -> float:
    """Bytes of the policy's weights in the case's dtype (the model built on the meta device), in GB."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignray.config import load_config
    from alignray.models import DTYPES, tiny_config
    from alignray.tokenizer import load_tokenizer

    cfg = load_config(None, overrides).model
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config(cfg, len(load_tokenizer(cfg))))
    return sum(p.numel() for p in model.parameters()) * DTYPES[cfg.dtype].itemsize / 1e9


def weight_sync_row(source: dict, overrides: list[str]) -> dict:
    """GB/s of a weight update = the policy's bytes / the median `timing/sync_s` (the driver's wait for the
    learner to publish and every rollout worker to load)."""
    row = {"case": "weight-sync-0.2b", "status": source["status"], "seconds": 0.0, "from": source["case"]}
    if source["status"] != "passed" or not source.get("sync_s"):
        row["status"] = "skipped" if source["status"] == "skipped" else "failed"
        row["detail"] = f"needs a passed {source['case']} with a sync time"
        return row
    gb = weights_gb(overrides)
    row.update(sync_s=source["sync_s"], weights_gb=gb, gb_per_s=gb / source["sync_s"])
    return row


def last_error(log: str) -> str:
    """The most telling line of a failed case's output: the last `alignray: error:` line, else the last
    line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def rollout_on_gpu(log: str) -> bool | None:
    """Whether the run's start-up lines place a rollout worker on a GPU (a line naming a rollout member and a
    device: `cuda…` → True, `cpu` → False); None when no line names one."""
    for line in log.splitlines():
        found = re.search(r"\b(cuda(?::\d+)?|cpu)\b", line) if "rollout" in line else None
        if found:
            return found.group(1).startswith("cuda")
    return None


def command(case: Case, run_dir: Path) -> list[str]:
    if case.kind == "pytest":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *case.args]
    head = ["train"] if case.kind == "train" else ["rm", "train"]
    return [sys.executable, "-m", "alignray.cli", *head, "--run-dir", str(run_dir), *case.args]


def run_case(case: Case, work: Path, limit_s: float) -> dict:
    """The case as a subprocess under `timeout` (SIGINT at the limit, SIGKILL 20 s later); its row."""
    run_dir, log_path = work / case.name, work / f"{case.name}.log"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("PYTHONUNBUFFERED", "1")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(["timeout", "-s", "INT", "-k", "20", f"{limit_s:.0f}", *command(case, run_dir)],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    row = {"case": case.name, "seconds": round(seconds, 1), "log": str(log_path)}
    if proc.returncode in (124, 137) or (proc.returncode != 0 and seconds >= limit_s):
        row.update(status="timeout", detail=f"no result in {limit_s:.0f} s; {last_error(text)}")
        return row
    if proc.returncode != 0:
        row.update(status="failed", detail=last_error(text))
        return row
    row["status"] = "passed"
    if case.kind == "pytest":
        if re.search(r"\b1 passed\b", text) is None:
            row.update(status="skipped" if "skipped" in text else "failed", detail=last_error(text))
    elif case.kind == "train":
        row.update(train_numbers(run_dir), run_dir=str(run_dir))
        row["rollout_on_gpu"] = rollout_on_gpu(text)
        if not row["steps"]:
            row.update(status="failed", detail="no step in metrics.jsonl")
    else:
        summary = json.loads((run_dir / "summary.json").read_text())
        row.update(run_dir=str(run_dir), pairs=summary.get("pairs"),
                   test_accuracy=(summary.get("eval") or {}).get("accuracy"))
    return row


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


COLUMNS = ("case", "status", "seconds", "steps", "reward_first", "reward_last", "gen_s", "train_s", "sync_s",
           "gen_tokens_per_s", "learner_tokens_per_s", "mfu", "gb_per_s", "test_accuracy", "rollout_on_gpu")


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    details = [f"- {r['case']}: {r['detail']}" for r in rows if r.get("detail")]
    return "\n".join(lines + details)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write the rows as JSON here")
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(ORDER)}")
    parser.add_argument("--budget-s", type=float, help="total seconds (default 360 on a GPU, 1800 on CPU)")
    parser.add_argument("--work-dir", help="run directories and logs (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.is_available()
    known = cases(gpu)
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases else list(ORDER)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    budget = args.budget_s or (360.0 if gpu else 1800.0)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if gpu else "cpu"
    print(f"gpu_smoke on {device}: {', '.join(wanted)} (budget {budget:.0f} s, logs in {work})", flush=True)
    deadline, rows, by_name = time.monotonic() + budget, [], {}
    for name in [c for c in ORDER if c in wanted]:
        case = known[name]
        if case.kind == "derived":
            source = by_name.get("0.2b-separate") or {"case": "0.2b-separate", "status": "skipped"}
            row = weight_sync_row(source, known["0.2b-separate"].args)
        elif case.cuda_only and not gpu:
            row = {"case": name, "status": "skipped", "seconds": 0.0, "detail": "needs CUDA (none here)"}
        elif deadline - time.monotonic() < 30:
            row = {"case": name, "status": "skipped", "seconds": 0.0, "detail": "over the total budget"}
        else:
            row = run_case(case, work, min(case.timeout_s, deadline - time.monotonic()))
        rows.append(row)
        by_name[name] = row
        print(f"{name}: {row['status']} in {row['seconds']} s", flush=True)
    result = {"device": device, "budget_s": budget, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(rows))
    return 0 if all(r["status"] in ("passed", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
