"""LoRA weight sync: the merged model against the adapters alone, side by side:
`python benchmarks/lora_sync.py [--reps 7] [--out lora_sync.json]`.

What a LoRA run could send the rollout engines after each update, and what each choice costs:

1. bytes per update — "merged": every tensor of the model under the base names (W + alpha/r · B A for the
   adapted layers: what alignray sends, any engine loads it); "adapters": the A and B matrices only (an
   engine that applies adapters itself). The quickstart's tiny Llama (float32, real tensors), and the shapes
   of Qwen2.5-0.5B (tied embeddings) and Llama-3-8B (untied) in bfloat16 on the meta device (no weights);
   `model.lora` r=8 and r=64, `target_modules: all`.
2. CPU seconds per update, learner side (merge + pack into 64 MB buckets, or pack the adapters) and engine
   side (the HF engine copies the merged tensors into its parameters, or the adapters into a LoRA-injected
   copy of the model), on the quickstart model and a mid-size one (hidden 512, 8 layers, vocab 32000).
3. The HF engine's generation with the adapters applied per token (a LoRA-injected model, what an engine
   receiving adapters runs) against the merged model: the quickstart's shape of a step (16 prompts × 4
   samples × 32 new tokens, the lean decoder), alternating repetitions, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial

import numpy as np
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

MiB = 2**20
SHAPES = {  # name → LlamaConfig kwargs (bfloat16)
    "Qwen2.5-0.5B shape": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               tie_word_embeddings=True),
    "Llama-3-8B shape": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             tie_word_embeddings=False),
}


def lora_cfg(r: int, **tiny):
    from alignray.config_sections import LoraConfig, ModelConfig

    return ModelConfig(lora=LoraConfig(r=r, alpha=2 * r), **({"tiny": tiny} if tiny else {}))


def nbytes(state: dict, dtype: torch.dtype | None = None) -> int:
    """Bytes of `state` (each tensor in `dtype` when given: the dtype it would travel in)."""
    size = torch.tensor([], dtype=dtype).element_size() if dtype is not None else None
    return sum(t.numel() * (size or t.element_size()) for t in state.values())


def update_bytes() -> list[dict]:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from alignray.lora import adapter_state, apply_lora, lora_targets, merged_state, param_counts
    from alignray.models import load_policy

    rows = []
    for r in (8, 64):
        models = {"quickstart tiny Llama": None, **SHAPES}
        for name, kwargs in models.items():
            cfg, dtype = lora_cfg(r), torch.float32 if kwargs is None else torch.bfloat16
            if kwargs is None:
                model = load_policy(cfg)
            else:
                with torch.device("meta"):
                    model = AutoModelForCausalLM.from_config(LlamaConfig(**kwargs), dtype=dtype)
            apply_lora(model, cfg)
            state = {n: p.detach() for n, p in model.named_parameters()}
            adapters = adapter_state(state)
            # merged tensors are shaped as the base ones: on the meta device, count them without merging
            base = {n: t for n, t in state.items() if n not in adapters}
            merged = merged_state(state, lora_targets(model)) if kwargs is None else base
            trainable, total = param_counts(model)
            rows.append({"model": name, "r": r, "params": total - trainable,
                         "trainable_pct": 100 * trainable / total, "merged_mib": nbytes(merged, dtype) / MiB,
                         "adapters_mib": nbytes(adapters, dtype) / MiB})
            rows[-1]["ratio"] = rows[-1]["merged_mib"] / rows[-1]["adapters_mib"]
    return rows


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync_seconds(reps: int) -> list[dict]:
    from alignray.lora import adapter_state, apply_lora, lora_targets, merged_state
    from alignray.models import load_policy
    from alignray.rollout.hf import HFEngine
    from alignray.rollout.weights import pack_state, unpack_bucket

    rows = []
    sizes = {"quickstart tiny Llama": {},
             "hidden 512, 8 layers, vocab 32000": dict(hidden_size=512, intermediate_size=1408,
                                                      num_hidden_layers=8, num_attention_heads=8)}
    for name, tiny in sizes.items():
        cfg = lora_cfg(8, **tiny)
        vocab = 32000 if tiny else None
        model = load_policy(cfg, vocab)
        apply_lora(model, cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".lora_B." in n:
                    p.normal_(0, 0.01)
        targets = lora_targets(model)
        state = {n: p.detach() for n, p in model.named_parameters()}
        plain = HFEngine(load_policy(cfg, vocab), 0, 2)
        injected_model = load_policy(cfg, vocab)
        apply_lora(injected_model, cfg)
        injected = HFEngine(injected_model, 0, 2)
        merged_buckets = pack_state(merged_state(state, targets).items(), 64)
        adapter_buckets = pack_state(adapter_state(state).items(), 64)
        def load(engine, buckets) -> None:
            for b in buckets:
                engine.load_weights(unpack_bucket(b))

        rows.append({"model": name,
                     "merged_pack_s": timed(partial(lambda s, t: pack_state(merged_state(s, t).items(), 64),
                                                    state, targets), reps),
                     "adapters_pack_s": timed(partial(lambda s: pack_state(adapter_state(s).items(), 64),
                                                      state), reps),
                     "merged_load_s": timed(partial(load, plain, merged_buckets), reps),
                     "adapters_load_s": timed(partial(load, injected, adapter_buckets), reps),
                     "merged_mib": sum(b.nbytes for b in merged_buckets) / MiB,
                     "adapters_mib": sum(b.nbytes for b in adapter_buckets) / MiB})
    return rows


def generation_seconds(reps: int) -> dict:
    from alignray.lora import apply_lora, lora_targets, merged_state
    from alignray.models import load_policy
    from alignray.rollout.engine import SamplingSettings
    from alignray.rollout.hf import HFEngine

    cfg = lora_cfg(8)
    model = load_policy(cfg)
    apply_lora(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.01)
    merged = HFEngine(load_policy(cfg), 0, 2)
    merged.load_weights(merged_state({n: p.detach() for n, p in model.named_parameters()},
                                     lora_targets(model)).items())
    engines = {"merged": merged, "adapters applied per token": HFEngine(model, 0, 2)}
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 259, rng.integers(12, 25)) for _ in range(16)]
    settings = SamplingSettings(max_new_tokens=32, n=4, stop_token_ids=(), seed=0)
    times: dict[str, list[float]] = {k: [] for k in engines}
    for rep in range(reps + 1):  # rep 0 warms up
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(prompts, settings)
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"bytes": update_bytes(), "sync": sync_seconds(args.reps),
               "generate": generation_seconds(args.reps)}
    print("| model | LoRA r | base params | trainable % | merged update MiB | adapters MiB "
          "| merged / adapters |")
    print("|---|---|---|---|---|---|---|")
    for r in results["bytes"]:
        print(f"| {r['model']} | {r['r']} | {r['params'] / 1e6:.1f} M | {r['trainable_pct']:.2f} | "
              f"{r['merged_mib']:.1f} | {r['adapters_mib']:.2f} | {r['ratio']:.0f}× |")
    print()
    print("| model (float32, CPU) | merged: merge + pack s | engine load s | adapters: pack s "
          "| engine load s |")
    print("|---|---|---|---|---|")
    for r in results["sync"]:
        print(f"| {r['model']} ({r['merged_mib']:.1f} vs {r['adapters_mib']:.2f} MiB) | "
              f"{r['merged_pack_s']:.4f} | {r['merged_load_s']:.4f} | {r['adapters_pack_s']:.4f} | "
              f"{r['adapters_load_s']:.4f} |")
    print()
    g = results["generate"]
    base = g["merged"]
    print("| HF engine, 16 prompts × 4 samples × 32 tokens | median s | × merged |")
    print("|---|---|---|")
    for name, s in g.items():
        print(f"| {name} | {s:.3f} | {s / base:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
