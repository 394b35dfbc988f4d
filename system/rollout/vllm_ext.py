"""The vLLM worker extension: methods vLLM mixes into each of its workers (`LLM(worker_extension_cls=...)`).

`LLM.collective_rpc("alignray_...")` runs them on every worker (one per tensor-parallel rank), inside the
process that owns the model. Each receives parameters under their Hugging Face names and hands them to the
worker's `reload_weights` (vLLM's in-place layerwise reload: the model's own `load_weights` fuses q/k/v and
gate/up and shards for tensor parallelism, then the platform's weight post-processing, e.g. CPU GEMM
repacking, runs again and the result is copied into the existing kernel tensors): no restart, no new
allocation of the engine's weights. Arguments are plain types (lists of tuples, tensors) so they also pass
vLLM's serialisation when the engine core runs in another process.

This module must not import vllm at module level: vLLM imports it by qualified name inside its worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import torch

from alignray.rollout.transports import make_transport, views
from alignray.rollout.weights import TensorSpec

SpecTuple = tuple[str, str, tuple[int, ...], int, int]
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class _RotaryReloadFilter(logging.Filter):
    """vLLM warns "RotaryEmbedding: Failed to load weights" on every in-place reload: its cos/sin cache is
    computed, never in a checkpoint, and is put back unchanged. The parity tests cover correctness; the
    warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and record.args[0] == "RotaryEmbedding"
                    and "Failed to load" in str(record.msg))


def _quiet_rotary_reload_warning() -> None:
    log = logging.getLogger(RELOAD_LOGGER)
    if not any(isinstance(f, _RotaryReloadFilter) for f in log.filters):
        log.addFilter(_RotaryReloadFilter())


class AlignrayWorkerExtension:
    """Mixed into vLLM's Worker: `self.reload_weights`, `self.device` and `self.model_runner` come from it."""

    def _alignray_load(self, named: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Reload the model's weights in place from `named` (all of one update: vLLM's layerwise reload
        processes a layer once all its tensors have arrived, so one update must not be split over several
        reloads); returns how many tensors were loaded."""
        _quiet_rotary_reload_warning()
        count = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal count
            for name, tensor in named:
                count += 1
                yield name, tensor

        self.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)  # type: ignore[attr-defined]
        device = getattr(self, "device", None)
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return count

    def alignray_load_named(self, named: list[tuple[str, torch.Tensor]]) -> int:
        """Load a list of (name, tensor)."""
        return self._alignray_load(named)

    def alignray_load_buckets(self, buckets: list[tuple[list[SpecTuple], torch.Tensor]]) -> int:
        """Load packed buckets, each (manifest, flat uint8 bytes): views of the object store's shared memory
        when the engine core runs in this process, nothing is copied before the model's own parameters."""
        return self._alignray_load(chain.from_iterable(views([TensorSpec(*s) for s in specs], flat)
                                                       for specs, flat in buckets))

    def alignray_load_handles(self, transport: str, handles: list[Any]) -> int:
        """GPU transports: this worker opens each handle itself (IPC memory, or a broadcast it takes part in),
        lazily and in order, so an NCCL receiver holds one bucket at a time."""
        receiver = self._alignray_receiver(transport)
        return self._alignray_load(chain.from_iterable(receiver.receive(h) for h in handles))

    def _alignray_receiver(self, transport: str):
        """One receiver per worker and transport, kept: the NCCL group is formed once."""
        cache = self.__dict__.setdefault("_alignray_receivers", {})
        if transport not in ("cuda_ipc", "nccl"):
            raise ValueError(f"transport {transport!r} is not received inside the engine")
        if transport not in cache:
            # an NCCL receiver learns the group from the first handle
            cache[transport] = make_transport(transport)
        return cache[transport]
