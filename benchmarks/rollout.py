"""Rollout engines side by side: transformers `generate` vs vLLM on the same tiny model, prompts and sampling.

Measures new tokens/s at several batch sizes (prompts × 1 sample; the tokens counted are those returned, a row
that samples </s> stops early in both engines) and the time of one weight update through the production path
(learner packs buckets → object store → engine loads in place), with its bytes and GB/s. Prints a table and
writes JSON.

    bash deploy/install.sh --test && .venv/bin/python benchmarks/rollout.py --out runs/bench/rollout.json

CPU note: vLLM's CPU backend binds its OpenMP threads to the cores it is given; both engines get the same
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

BATCHES = (16, 64, 256)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--large-batch", type=int, default=256,
                   help="from this batch size on, use --large-new-tokens")
    p.add_argument("--large-new-tokens", type=int, default=16,
                   help="fewer new tokens for the largest batches")
    p.add_argument("--repeats", type=int, default=3, help="weight updates timed (median reported)")
    p.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--out", default="runs/bench/rollout.json")
    return p.parse_args()


def prompts_for(batch: int, tokenizer, cfg) -> list[np.ndarray]:
    """The built-in prompt set, cycled to `batch` prompts (same prompts for every engine)."""
    from alignray.data import load_prompts

    table = load_prompts(cfg.data, tokenizer).table
    column = table.column("prompt_tokens").to_pylist()
    return [np.asarray(column[i % len(column)], dtype=np.int32) for i in range(batch)]


def build_engine(name: str, cfg, tokenizer):
    from alignray.actors.rollout import make_engine

    cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"engine": name})})
    return make_engine(cfg, tokenizer)


def no_stop_sampling(new_tokens: int, seed: int):
    """Temperature 1, top-p 1, one sample, no stop ids beyond </s>."""
    from alignray.rollout.engine import SamplingSettings

    return SamplingSettings(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0, n=1, seed=seed)


def time_generation(engine, prompts: list[np.ndarray], new_tokens: int) -> dict:
    engine.generate(prompts[:4], no_stop_sampling(4, seed=123))  # warm-up
    t0 = time.perf_counter()
    out = engine.generate(prompts, no_stop_sampling(new_tokens, seed=0))
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.tokens) for group in out for c in group)
    return {"batch": len(prompts), "new_tokens_per_row": new_tokens, "generated_tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds}


def time_weight_update(engine, cfg, tokenizer, repeats: int) -> dict:
    """Learner side (pack + ray.put) and engine side (fetch + load in place), as in production."""
    import ray

    from alignray.models import load_policy
    from alignray.rollout.transports import ObjectStoreTransport
    from alignray.rollout.weights import pack_state, unpack_bucket

    state = {n: p.detach() for n, p in load_policy(cfg.model, len(tokenizer)).named_parameters()}
    sender, receiver = ObjectStoreTransport(put=ray.put), ObjectStoreTransport(get=ray.get)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        buckets = pack_state(state.items(), cfg.learner.weight_bucket_mb)
        handles = sender.publish(buckets)
        t1 = time.perf_counter()
        fetched = [receiver.fetch(h) for h in handles]
        if hasattr(engine, "load_buckets"):
            engine.load_buckets(fetched)
        else:
            for b in fetched:
                engine.load_weights(unpack_bucket(b))
        t2 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t2 - t0))
        del handles, fetched
    nbytes = sum(b.nbytes for b in buckets)
    pack, load, total = (statistics.median(r[i] for r in runs) for i in range(3))
    return {"bytes": nbytes, "tensors": len(state), "buckets": len(buckets), "publish_s": pack,
            "load_s": load, "seconds": total, "gb_per_s": nbytes / total / 1e9}


def bench_engine(name: str, args, cfg, tokenizer) -> dict:
    t0 = time.perf_counter()
    engine = build_engine(name, cfg, tokenizer)
    result = {"engine": name, "startup_s": time.perf_counter() - t0, "generation": []}
    for batch in args.batches:
        new = args.large_new_tokens if batch >= args.large_batch else args.max_new_tokens
        row = time_generation(engine, prompts_for(batch, tokenizer, cfg), new)
        result["generation"].append(row)
        print(f"  {name}: batch {batch:4d} × {new} new tokens: {row['tokens_per_s']:8.0f} tokens/s",
              flush=True)
    result["weight_update"] = time_weight_update(engine, cfg, tokenizer, args.repeats)
    return result


def table(results: list[dict], args) -> str:
    lines = ["", "new tokens/s (higher is better)", f"{'engine':8s}" + "".join(f"{'batch ' + str(b):>14s}"
                                                                                for b in args.batches)]
    for r in results:
        lines.append(f"{r['engine']:8s}" + "".join(f"{g['tokens_per_s']:14.0f}" for g in r["generation"]))
    lines.append("")
    lines.append(f"{'engine':8s}{'startup s':>11s}{'update s':>10s}{'MB':>8s}{'tensors':>9s}{'buckets':>9s}"
                 f"{'GB/s':>8s}")
    for r in results:
        w = r["weight_update"]
        lines.append(f"{r['engine']:8s}{r['startup_s']:11.1f}{w['seconds']:10.4f}{w['bytes'] / 1e6:8.2f}"
                     f"{w['tensors']:9d}{w['buckets']:9d}{w['gb_per_s']:8.3f}")
    large = [b for b in args.batches if b >= args.large_batch]
    if large:
        lines.append(f"\nbatches {large} generate {args.large_new_tokens} new tokens per row (others "
                     f"{args.max_new_tokens}) to keep the run short.")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import ray

    from alignray.config import Config
    from alignray.tokenizer import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING")
    cfg = Config()
    tokenizer = load_tokenizer(cfg.model)
    print(f"tiny Llama: hidden {cfg.model.tiny.hidden_size}, layers {cfg.model.tiny.num_hidden_layers}, "
          f"vocab {len(tokenizer)}; torch threads {torch.get_num_threads()}", flush=True)
    results = [bench_engine(name, args, cfg, tokenizer) for name in args.engines]
    ray.shutdown()
    print(table(results, args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}
    out.write_text(json.dumps({"meta": meta, "args": vars(args), "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":  # vLLM may spawn processes: keep the entry point guarded
    main()
