"""RolloutWorker: owns one generation engine; prompt batch in, rollout batch out, weights loaded in place.

torch and the engines are imported in the worker, not at module level: the driver imports this module to
create the actor, and must not pay for torch on its critical path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pyarrow as pa
import ray

from alignray.actors.watch import WATCHED, Watched
from alignray.config import Config
from alignray.devices import actor_device
from alignray.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from alignray.rollout.weights import WeightUpdate


def make_engine(cfg: Config, tokenizer, device: str = "cpu"):
    """The configured engine; the HF engine's model on `device` (vLLM places itself on the GPU Ray gave)."""
    if cfg.rollout.engine == "vllm":
        from alignray.rollout.vllm import VLLMEngine

        return VLLMEngine(cfg, tokenizer)
    from alignray.models import load_policy
    from alignray.rollout.hf import HFEngine

    return HFEngine(load_policy(cfg.model, len(tokenizer)).to(device), tokenizer.pad_token_id,
                    tokenizer.eos_token_id)


@ray.remote(**WATCHED)
class RolloutWorker(Watched):
    def __init__(self, cfg_dict: dict, name: str):
        self.cfg = Config.model_validate(cfg_dict)
        self.name = name
        self.engine = None  # built by the start call, where the watchdog can see its stages and stack
        self.version = 0
        self._receivers: dict = {}  # GPU transports, opened on first use and kept
        self._loaded_once = False

    def _build(self) -> None:
        if self.engine is not None:
            return
        self.begin_stages()
        import torch

        torch.set_num_threads(self.cfg.rollout.torch_threads)
        self.stage("imported torch")
        self._device = actor_device(self.cfg.rollout.num_gpus, "rollout.num_gpus")
        self.tokenizer = load_tokenizer(self.cfg.model)
        self.engine = make_engine(self.cfg, self.tokenizer, self._device)
        self.stage(f"{self.cfg.rollout.engine} engine built on {self._device}")

    def ready(self) -> str:
        self._build()
        return self.name

    def device(self) -> str:
        """Where this worker's engine runs: "cpu", or "cuda:0" (the GPU `rollout.num_gpus` reserved)."""
        self._build()
        return self._device

    @ray.method(num_returns=2)
    def generate(self, prompts: pa.RecordBatch, seed: int) -> tuple[pa.RecordBatch, dict]:
        """`prompts` arrives resolved from its ObjectRef (zero-copy); the batch goes back to the object store
        and only a few scalars (`meta`) go to the driver."""
        from alignray.rollout.engine import generate_rollout

        self._build()
        return generate_rollout(self.engine, self.tokenizer, self.cfg.rollout, prompts, seed, self.version,
                                f"rollout worker {self.name}", self.cfg.reward.on_error)

    def update_weights(self, update: WeightUpdate) -> dict:
        """Load every bucket of `update` in place and adopt its version; returns what moved and how long it
        took.

        Object store: the buckets are read here (zero-copy) and handed to the engine whole when it takes
        buckets (vLLM: one collective RPC for the whole update). GPU transports: the vLLM workers open the
        handles themselves; an engine without that ability receives them in this process."""
        from alignray.rollout.transports import ObjectStoreTransport, make_transport
        from alignray.rollout.weights import unpack_bucket

        self._build()
        t0 = time.perf_counter()
        count = 0
        if update.transport == "object_store":
            store = ObjectStoreTransport(get=ray.get)
            buckets = [store.fetch(h) for h in update.handles]
            if hasattr(self.engine, "load_buckets"):
                count = self.engine.load_buckets(buckets)
            else:
                count = sum(self.engine.load_weights(unpack_bucket(b)) for b in buckets)
        elif hasattr(self.engine, "load_handles"):
            count = self.engine.load_handles(update.transport, update.handles)
        else:
            if update.transport not in self._receivers:
                self._receivers[update.transport] = make_transport(update.transport)
            receiver = self._receivers[update.transport]
            count = sum(self.engine.load_weights(receiver.receive(h)) for h in update.handles)
        if not self._loaded_once:
            self._loaded_once = True
            self.stage(f"first weights loaded (version {update.version})")
        self.version = update.version
        return {"version": self.version, "tensors": count, "bytes": update.nbytes,
                "seconds": time.perf_counter() - t0}
