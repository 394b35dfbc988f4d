"""RolloutWorker: owns one generation engine; prompt batch in, rollout batch out, weights loaded in place."""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from system.config import Config
from system.engines.base import SamplingSettings, build_rollout_batch
from system.models import load_policy, load_tokenizer
from system.schema import check_batch
from system.weights import WeightUpdate, unpack_bucket


def make_engine(cfg: Config, tokenizer):
    if cfg.rollout.engine == "vllm":
        from system.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, tokenizer)
    from system.engines.hf import HFEngine

    return HFEngine(load_policy(cfg.model, len(tokenizer)), tokenizer.pad_token_id, tokenizer.eos_token_id)


@ray.remote
class RolloutWorker:
    def __init__(self, cfg_dict: dict, name: str):
        self.cfg = Config.model_validate(cfg_dict)
        self.name = name
        torch.set_num_threads(self.cfg.rollout.torch_threads)
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.engine = make_engine(self.cfg, self.tokenizer)
        self.version = 0

    def ready(self) -> str:
        return self.name

    @ray.method(num_returns=2)
    def generate(self, prompts: pa.RecordBatch, seed: int) -> tuple[pa.RecordBatch, dict]:
        """`prompts` arrives resolved from its ObjectRef (zero-copy); the batch goes back to the object store and
        only a few scalars (`meta`) go to the driver."""
        t0 = time.perf_counter()
        check_batch(prompts, "prompt", f"rollout worker {self.name} input")
        r = self.cfg.rollout
        sampling = SamplingSettings(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                                    n=r.samples_per_prompt, stop_token_ids=tuple(r.stop_token_ids), seed=seed)
        column = prompts.column("prompt_tokens")
        token_lists = [column[i].values.to_numpy() for i in range(prompts.num_rows)]
        completions = self.engine.generate(token_lists, sampling)
        batch = build_rollout_batch(prompts, completions, self.version,
                                    lambda t: self.tokenizer.decode(t, skip_special_tokens=True))
        new_tokens = sum(len(c.tokens) for group in completions for c in group)
        return batch, {"worker": self.name, "samples": batch.num_rows, "new_tokens": new_tokens,
                       "policy_version": self.version, "seconds": time.perf_counter() - t0}

    def update_weights(self, update: WeightUpdate) -> dict:
        """Load every bucket of `update` in place and adopt its version; returns what moved and how long it took."""
        t0 = time.perf_counter()
        count = 0
        for handle in update.handles:
            count += self.engine.load_weights(unpack_bucket(ray.get(handle)))
        self.version = update.version
        return {"version": self.version, "tensors": count, "bytes": update.nbytes,
                "seconds": time.perf_counter() - t0}
