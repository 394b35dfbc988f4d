"""Reward-model scoring throughput: N callers each holding their own copy of a reward model (today's reward
workers) against the same N callers sharing the reward-model service (`reward.service`, 1 server, then 2),
side by side in one run: same model, same data. Table + JSON.

  python benchmarks/rm_service.py --callers 4 --requests 8 --samples 16 --servers 1 2 \
      [--hidden 256 --layers 4] [--out benchmarks/results/rm_service.json]
  RAY_ADDRESS=auto python benchmarks/rm_service.py ... --num-gpus 1     # on a cluster, models on GPUs

Each caller is a Ray actor like a reward worker: it sends `--requests` requests of `--samples` (prompt,
response) pairs one after another (a reward worker scores one rollout batch at a time). "per-worker": its
own model scores them (forwards of the scorer's `batch_size`); "service": a RewardModelServer scores them,
batching the callers' concurrent requests (`--max-batch-size`, `--batch-wait-ms`). One warm-up request per
caller is left out; samples/s counts every caller's samples over the wall time from the first request to the
last answer. The model is a randomly initialised Llama sequence classifier (`--hidden`, `--layers`) with a
word tokenizer; responses are 4-64 words, as RL answers vary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from alignray.actors.cluster import connect_ray
from alignray.actors.rm_client import ServedScorer, ServerSet
from alignray.actors.rm_server import RewardModelServer
from alignray.config import load_config
from alignray.config_sections import ScorerConfig

VOCAB = [f"w{i}" for i in range(2000)]


def build_model(args, root: Path) -> str:
    import torch

    from alignray.rewards.models import ScalarRewardModel
    from alignray.rm.backbones import TinyModelSpec, build_word_tokenizer, new_backbone

    tokenizer = build_word_tokenizer([" ".join(VOCAB)])
    spec = TinyModelSpec(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(args.hidden // 64, 1))
    torch.manual_seed(0)
    backbone = new_backbone("sequence_classification", None, spec, tokenizer)
    ScalarRewardModel(backbone, tokenizer, 256).save(root / "rm")
    return str(root / "rm")


def requests_of(args, caller: int) -> list[tuple[list[str], list[str]]]:
    """`--requests` + 1 (warm-up) requests of `--samples` pairs; the same for every layout."""
    rng = np.random.default_rng(caller)
    words = lambda n: " ".join(rng.choice(VOCAB, n))  # noqa: E731
    return [([words(int(rng.integers(8, 24))) for _ in range(args.samples)],
             [words(int(rng.integers(4, 65))) for _ in range(args.samples)])
            for _ in range(args.requests + 1)]


@ray.remote
class Caller:
    """A reward worker's model scoring, alone: its own ModelScorer, or a ServedScorer over the servers."""

    def __init__(self, scorer: dict, servers: dict | None, torch_threads: int):
        import torch

        from alignray.rewards.scorers import ModelScorer

        torch.set_num_threads(torch_threads)
        cfg = ScorerConfig(**scorer)
        if servers is None:
            self.scorer = ModelScorer(cfg)
        else:
            self.servers = ServerSet(600.0)
            self.servers.update(servers)
            self.scorer = ServedScorer(cfg, self.servers)

    def run(self, requests: list[tuple[list[str], list[str]]]) -> dict:
        """Score the requests one after another; the forwards of its own model (none when served)."""
        start, forwards = time.perf_counter(), 0
        for prompts, responses in requests:
            values = self.scorer.score(prompts, responses).columns["reward"]
            assert len(values) == len(prompts) and np.isfinite(values).all()
            if not isinstance(self.scorer, ServedScorer):
                forwards += -(-len(prompts) // self.scorer.batch_size)
        return {"samples": sum(len(p) for p, _ in requests), "seconds": time.perf_counter() - start,
                "forwards": forwards}


def one_layout(args, path: str, servers: int) -> dict:
    """Time N callers with own copies (servers = 0) or sharing `servers` servers."""
    scorer = {"name": "rm", "type": "model", "path": path, "batch_size": args.per_worker_batch_size}
    handles = {}
    if servers:
        cfg = load_config(None, [f"reward.scorers=[{json.dumps(scorer)}]", "reward.service.enabled=true",
                                 f"reward.service.max_batch_size={args.max_batch_size}",
                                 f"reward.service.batch_wait_ms={args.batch_wait_ms}",
                                 f"reward.service.torch_threads={args.torch_threads}",
                                 f"reward.service.num_gpus={args.num_gpus}"])
        handles = {f"rm_server-{i}": RewardModelServer.options(num_cpus=args.cpus, num_gpus=args.num_gpus)
                   .remote(cfg.model_dump(mode="json")) for i in range(servers)}
        ray.get([h.ready.remote() for h in handles.values()])
    callers = [Caller.options(num_cpus=args.cpus, num_gpus=0 if servers else args.num_gpus)
               .remote(scorer, handles or None, args.torch_threads) for _ in range(args.callers)]
    work = [requests_of(args, i) for i in range(args.callers)]
    ray.get([c.run.remote(w[:1]) for c, w in zip(callers, work, strict=True)])  # warm-up, not timed
    before = ray.get([h.stats.remote() for h in handles.values()])
    start = time.perf_counter()
    results = ray.get([c.run.remote(w[1:]) for c, w in zip(callers, work, strict=True)])
    seconds = time.perf_counter() - start
    samples = sum(r["samples"] for r in results)
    if servers:
        after = ray.get([h.stats.remote() for h in handles.values()])
        forwards = sum(a["forwards"] - b["forwards"] for a, b in zip(after, before, strict=True))
    else:
        forwards = sum(r["forwards"] for r in results)
    for actor in [*callers, *handles.values()]:
        ray.kill(actor)
    return {"layout": "service" if servers else "per-worker", "callers": args.callers, "servers": servers,
            "model_copies": servers or args.callers, "samples": samples, "seconds": seconds,
            "samples_per_s": samples / seconds, "forwards": forwards, "mean_batch_size": samples / forwards}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=4, help="reward workers calling")
    parser.add_argument("--requests", type=int, default=8, help="requests per caller (timed)")
    parser.add_argument("--samples", type=int, default=16, help="(prompt, response) pairs per request")
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2], help="server counts to compare")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=64, help="reward.service.max_batch_size")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="reward.service.batch_wait_ms")
    parser.add_argument("--per-worker-batch-size", type=int, default=32, help="the scorer's batch_size")
    parser.add_argument("--torch-threads", type=int, default=1, help="per caller and per server")
    parser.add_argument("--cpus", type=float, default=0.5, help="Ray CPUs per caller and per server")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model copy")
    parser.add_argument("--out", default="benchmarks/results/rm_service.json")
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    connect_ray(None, args.cpus * (args.callers + max(args.servers)))
    path = build_model(args, Path(tempfile.mkdtemp(prefix="alignray-rm-service-")))
    rows = [one_layout(args, path, 0)] + [one_layout(args, path, n) for n in args.servers]
    ray.shutdown()
    base = rows[0]["samples_per_s"]
    print("| layout | callers | servers | model copies | samples | seconds | samples/s | × vs per-worker | "
          "mean batch size |\n|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        row["ratio_vs_per_worker"] = row["samples_per_s"] / base
        print(f"| {row['layout']} | {row['callers']} | {row['servers'] or '-'} | {row['model_copies']} | "
              f"{row['samples']} | {row['seconds']:.2f} | {row['samples_per_s']:.1f} | "
              f"{row['ratio_vs_per_worker']:.2f} | {row['mean_batch_size']:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
