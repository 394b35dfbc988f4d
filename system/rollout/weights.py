"""Weight updates learner → rollout engines, in buckets: many tensors per message, never one call per tensor.

A bucket is one contiguous byte buffer plus a small manifest (name, dtype, shape, offset) per tensor, so the
Ray object store moves it as one zero-copy numpy buffer and the engine unpacks views of it. Transports (object
store, CUDA IPC, NCCL) only decide how a bucket's bytes reach the engine; packing and versioning are shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are packed: the driver handles `WeightUpdate`s without it
    import torch

ALIGN = 64  # bytes: every tensor starts aligned so views are valid for any dtype


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class Bucket:
    specs: list[TensorSpec]
    buffer: np.ndarray  # uint8, contiguous

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


@dataclass
class WeightUpdate:
    """What the driver forwards to every engine: the new version and the handles of its buckets (never the
    bytes)."""

    version: int
    handles: list = field(default_factory=list)
    transport: str = "object_store"
    num_tensors: int = 0
    nbytes: int = 0


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def group_into_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
                       ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Greedy grouping in parameter order; a tensor larger than `bucket_bytes` travels alone."""
    current: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = _aligned(tensor.numel() * tensor.element_size())
        if current and size + nbytes > bucket_bytes:
            yield current
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    if current:
        yield current


def pack_bucket(tensors: list[tuple[str, torch.Tensor]]) -> Bucket:
    import torch

    specs, offset = [], 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        specs.append(TensorSpec(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, nbytes))
        offset += _aligned(nbytes)
    buffer = np.empty(offset, dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    for spec, (_, t) in zip(specs, tensors, strict=True):
        src = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        flat[spec.offset: spec.offset + spec.nbytes].copy_(src)
    return Bucket(specs, buffer)


def views(specs: list[TensorSpec], flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Named views into a flat uint8 buffer on any device: the inverse of `pack_bucket`'s layout."""
    import torch

    for spec in specs:
        yield spec.name, flat[spec.offset: spec.offset + spec.nbytes].view(getattr(torch,
                                                                                   spec.dtype)).reshape(
            spec.shape)


def unpack_bucket(bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views into the bucket's buffer (no copy): the engine copies them into its own parameters."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the object store hands out read-only memory
        flat = torch.from_numpy(bucket.buffer)
    return views(bucket.specs, flat)


def pack_state(named: Iterable[tuple[str, torch.Tensor]], bucket_mb: float) -> list[Bucket]:
    return [pack_bucket(group) for group in group_into_buckets(named, int(bucket_mb * 2**20))]
