"""Seconds per learner step, with only the needed forwards vs all three the learner used to run every step:
`python benchmarks/learner_step.py [--reps 10] [--out learner_step.json]`.

One DeepSpeed rank (gloo, world size 1), the quickstart's tiny Llama and batch shape (16 prompts × 4 samples,
32 new tokens). "needed": kl_coef 0, on-policy, one update → the training forward only. "all forwards": the
same loss, plus an old-log-prob forward (an off-policy batch) and a reference forward (`algo.log_kl`), which
is what every step cost before. Also the log-prob read itself: z[y] − logsumexp(z) against log_softmax +
gather, forward + backward.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import numpy as np
import pyarrow as pa
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def batch(prompts: int, samples: int, new_tokens: int, version: int, vocab: int,
          seed: int = 0) -> pa.RecordBatch:
    from alignray.schema import SCHEMAS, list_array

    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(prompts), samples)
    p_tok = {p: rng.integers(3, vocab, rng.integers(16, 32)) for p in range(prompts)}
    resp = [rng.integers(3, vocab, rng.integers(new_tokens // 2, new_tokens + 1)) for _ in pid]
    n = len(pid)
    cols = [pa.array(pid, pa.int64()), pa.array([""] * n), list_array([p_tok[p] for p in pid], pa.int32()),
            pa.array(np.tile(np.arange(samples), prompts), pa.int32()), pa.array([""] * n),
            list_array(resp, pa.int32()), list_array([-rng.uniform(3, 6, len(r)) for r in resp],
                                                     pa.float32()),
            pa.array(np.full(n, version), pa.int64()), pa.array(["stop"] * n), pa.array(rng.normal(size=n),
                                                                                        pa.float32())]
    return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["scored"])


def logprob_read(reps: int) -> dict[str, float]:
    """[64, 60, 259] logits: forward + backward of the lean read vs log_softmax + gather."""
    from alignray.algorithms.logprobs import logprobs_from_logits

    logits = torch.randn(64, 60, 259, requires_grad=True)
    tokens = torch.randint(0, 259, (64, 60))
    fns = {"lean_s": lambda z: logprobs_from_logits(z, tokens),
           "log_softmax_s": lambda z: torch.log_softmax(z, -1).gather(-1, tokens[..., None])[..., 0]}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(logits).sum().backward()
            times[name].append(time.perf_counter() - t0)
    out = {name: min(ts) for name, ts in times.items()}
    # the [B, T, V] fp32 output log_softmax keeps for backward
    out["log_softmax_saved_bytes"] = logits.numel() * 4
    return out


def one_rank() -> None:
    """This process as a process group of one gloo rank: DeepSpeed's engines need one (also used by
    benchmarks/packing.py)."""
    from alignray.actors.learner import init_process_group

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init_process_group(0, 1, "127.0.0.1", port, "gloo", use_gpu=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
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
    cfg = load_config(None, ["learner.micro_batch_size=64"])
    tok = load_tokenizer(cfg.model)
    policy = load_policy(cfg.model, len(tok))
    reference = load_policy(cfg.model, len(tok)).requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=policy, optimizer=torch.optim.AdamW(policy.parameters(), lr=1e-6),
                                      config=ds_config(cfg, 1))
    results: dict = {}
    variants = {"needed": (cfg, 0), "all_forwards": (load_config(None, ["learner.micro_batch_size=64",
                                                                          "algo.log_kl=true"]), 1)}
    steps = {name: (LearnerStep(c, engine, reference, None, 0, 1, tok.pad_token_id, torch.device("cpu")),
                    batch(16, 4, c.rollout.max_new_tokens, version, len(tok)))
             for name, (c, version) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(args.reps + 1):  # alternating, so load from other jobs hits both alike; rep 0 warms up
        for name, (step, b) in steps.items():
            t0 = time.perf_counter()
            stats = step.run(b, 0)
            if rep:
                times[name].append(time.perf_counter() - t0)
            results.setdefault(name, {"old_forward": stats["learner/old_forward"],
                                      "ref_forward": stats["learner/ref_forward"]})
    for name, ts in times.items():
        results[name].update(median_s=statistics.median(ts), min_s=min(ts))
    results["speedup_median"] = results["all_forwards"]["median_s"] / results["needed"]["median_s"]
    results["speedup_min"] = results["all_forwards"]["min_s"] / results["needed"]["min_s"]
    results["logprob_read"] = logprob_read(args.reps)
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
