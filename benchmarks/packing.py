"""Learner tokens/s with packed micro-batches against padded ones, side by side on one ragged batch:
`python benchmarks/packing.py [--reps 6] [--out packing.json]`.

One DeepSpeed rank (gloo, world size 1, CPU), the quickstart's tiny Llama, one scored batch of 16 prompts × 4
samples with ragged lengths (prompts 8-40 tokens, responses 1-128 tokens, as RL answers are: most short, a
few hitting the limit). Variants, alternating repetitions in one process (load from other jobs hits all
alike): "padded" (`learner.packing=false`: every row padded to the batch's longest); the same micro-batches of
16 rows packed into one row, into rows of ≤ 1024 tokens and of ≤ 256 (`learner.pack_row_tokens: auto` here);
and "packed, by tokens" (`learner.micro_batch_tokens` = the batch's tokens / 4). Reports the median step
seconds, the learner's tokens/s (real tokens: prompt + response), the share of padding the padded layout
computes, and the gradient difference packed vs padded on the first step (relative).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import pyarrow as pa
import torch
from learner_step import one_rank

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def ragged_batch(prompts: int, samples: int, max_new: int, vocab: int, seed: int = 0) -> pa.RecordBatch:
    from alignray.schema import SCHEMAS, list_array

    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(prompts), samples)
    p_tok = {p: rng.integers(3, vocab, rng.integers(8, 41)) for p in range(prompts)}
    lengths = np.minimum(rng.geometric(1.0 / 32, len(pid)), max_new)  # mean ≈ 32, a tail up to max_new
    resp = [rng.integers(3, vocab, n) for n in lengths]
    n = len(pid)
    cols = [pa.array(pid, pa.int64()), pa.array([""] * n), list_array([p_tok[p] for p in pid], pa.int32()),
            pa.array(np.tile(np.arange(samples), prompts), pa.int32()), pa.array([""] * n),
            list_array(resp, pa.int32()),
            list_array([-rng.uniform(3, 6, len(r)) for r in resp], pa.float32()),
            pa.array(np.zeros(n), pa.int64()), pa.array(["stop"] * n),
            pa.array(rng.normal(size=n), pa.float32())]
    return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["scored"])


def padding_share(batch: pa.RecordBatch) -> float:
    """1 − real tokens / (rows × the longest row): what the padded layout computes for nothing."""
    lengths = sum(np.diff(np.asarray(batch.column(c).offsets)) for c in ("prompt_tokens", "response_tokens"))
    return 1.0 - float(lengths.sum()) / (len(lengths) * float(lengths.max()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import deepspeed

    from alignray.actors.learner import ds_config
    from alignray.config import load_config
    from alignray.learner.train_step import LearnerStep
    from alignray.models import load_policy
    from alignray.tokenizer import load_tokenizer

    one_rank()
    base = ["learner.micro_batch_size=16", "rollout.max_new_tokens=128", "learner.zero_stage=0"]
    cfg = load_config(None, base)
    tok = load_tokenizer(cfg.model)
    data = ragged_batch(16, 4, 128, len(tok))
    tokens = int(sum(np.diff(np.asarray(data.column(c).offsets)).sum()
                     for c in ("prompt_tokens", "response_tokens")))
    variants = {"padded": ["learner.packing=false"],
                "packed, one row": ["learner.pack_row_tokens=null"],
                "packed, rows ≤ 1024": ["learner.pack_row_tokens=1024"],
                "packed, rows ≤ 256 (auto)": [],
                "packed, by tokens": [f"learner.micro_batch_tokens={tokens // 4}"]}
    policy = load_policy(cfg.model, len(tok))
    engine, *_ = deepspeed.initialize(model=policy, optimizer=torch.optim.SGD(policy.parameters(), lr=0.0),
                                      config=ds_config(cfg, 1))
    steps = {name: LearnerStep(load_config(None, base + extra), engine, None, None, 0, 1, tok.pad_token_id,
                               torch.device("cpu")) for name, extra in variants.items()}
    grads: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.reps + 1):  # rep 0 warms up and captures each variant's gradient
        for name, step in steps.items():
            def capture(_k: int, name: str = name) -> None:
                params = engine.module.parameters()
                grads.setdefault(name, torch.cat([p.grad.flatten().clone() for p in params]))

            t0 = time.perf_counter()
            step.run(data, 0, before_optimizer_step=capture if rep == 0 else None)
            if rep:
                times[name].append(time.perf_counter() - t0)
    results = {"rows": data.num_rows, "tokens": tokens, "padding_share": padding_share(data), "variants": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        results["variants"][name] = {"median_s": med, "min_s": min(ts), "tokens_per_s": tokens / med,
                                     "speedup": statistics.median(times["padded"]) / med,
                                     "grad_rel_diff": float((grads[name] - grads["padded"]).norm()
                                                            / grads["padded"].norm())}
    print(f"{data.num_rows} rows, {tokens} tokens, padding {results['padding_share']:.0%} of the padded "
          "layout")
    print("| variant | median s | tokens/s | speed× | gradient rel. diff vs padded |")
    print("|---|---|---|---|---|")
    for name, r in results["variants"].items():
        print(f"| {name} | {r['median_s']:.3f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f} | "
              f"{r['grad_rel_diff']:.1e} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
