"""How a weight update's buckets travel from learner rank 0 to the rollout engines.

One interface, three transports. The sender `publish`es a list of packed `Bucket`s and gets back small
picklable handles (what the driver forwards in a `WeightUpdate`); the receiver turns each handle back into
named tensors with `receive`. Packing, versioning and loading are shared (`alignray.rollout.weights`, the
engines); a transport only moves bytes.

- `ObjectStoreTransport`: the default and the CPU path. `put`/`get` are injected (the actors pass `ray.put` /
  `ray.get`), so this module stays pure torch; a handle is an ObjectRef and the bucket is read zero-copy.
- `CudaIpcTransport` (GPU only): an engine colocated with the learner on the same GPU maps the learner's
  bucket buffer through a CUDA IPC handle (`torch.multiprocessing.reductions.reduce_tensor`); no bytes are
  copied.
- `NcclBroadcastTransport` (GPU only in production): learner rank 0 broadcasts each bucket to every engine
  worker on its own process group, formed once with `TCPStore` + `ProcessGroupNCCL`, apart from DeepSpeed's
  and vLLM's groups. The same class runs with backend "gloo" on CPU, which is how its mechanism is tested
  without a GPU.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from alignray.rollout.weights import Bucket, TensorSpec, unpack_bucket, views

NamedTensors = Iterator[tuple[str, torch.Tensor]]
TRANSPORTS = ("object_store", "cuda_ipc", "nccl")


class Transport(Protocol):
    name: str

    def publish(self, buckets: list[Bucket]) -> list:
        """Sender: make the buckets reachable by the engines; return one picklable handle per bucket."""

    def receive(self, handle: Any) -> NamedTensors:
        """Receiver: the named tensors of one bucket (views; the engine copies them into its parameters)."""


class ObjectStoreTransport:
    """Buckets go into an object store once and every engine reads the same copy (Ray: zero-copy shared
    memory)."""

    name = "object_store"

    def __init__(self, put: Callable[[Any], Any] | None = None, get: Callable[[Any], Any] | None = None):
        self.put, self.get = put, get

    def publish(self, buckets: list[Bucket]) -> list:
        if self.put is None:
            raise RuntimeError("ObjectStoreTransport needs a `put` (ray.put) to publish")
        return [self.put(b) for b in buckets]

    def fetch(self, handle: Any) -> Bucket:
        """The bucket itself (its buffer stays in shared memory), for engines that unpack buckets
        themselves."""
        if self.get is None:
            raise RuntimeError("ObjectStoreTransport needs a `get` (ray.get) to receive")
        return self.get(handle)

    def receive(self, handle: Any) -> NamedTensors:
        return unpack_bucket(self.fetch(handle))


@dataclass(frozen=True)
class IpcHandle:
    """One bucket as a CUDA IPC handle of its device buffer, plus the manifest to cut it into tensors."""

    specs: list[TensorSpec]
    rebuild: Callable
    args: tuple


class CudaIpcTransport:
    """GPU only. The learner copies each bucket to its GPU once and shares the buffer's memory by IPC handle.

    The sender keeps the buffers alive until the next `publish` (the engines must have loaded by then: the
    controller waits for every engine before it trains again)."""

    name = "cuda_ipc"

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self._alive: list[torch.Tensor] = []

    def publish(self, buckets: list[Bucket]) -> list[IpcHandle]:
        from torch.multiprocessing.reductions import reduce_tensor

        device = self.device or torch.device("cuda", torch.cuda.current_device())
        self._alive = [torch.from_numpy(b.buffer).to(device) for b in buckets]
        torch.cuda.synchronize(device)
        handles = []
        for bucket, flat in zip(buckets, self._alive, strict=True):
            rebuild, args = reduce_tensor(flat)
            handles.append(IpcHandle(list(bucket.specs), rebuild, tuple(args)))
        return handles

    def receive(self, handle: IpcHandle) -> NamedTensors:
        """Open the handle on this process's current device (indices differ across processes under
        CUDA_VISIBLE_DEVICES; colocated means the same physical GPU)."""
        args = list(handle.args)
        args[6] = torch.cuda.current_device()  # rebuild_cuda_tensor's storage_device
        flat = handle.rebuild(*args)
        return views(handle.specs, flat)


@dataclass(frozen=True)
class BroadcastHandle:
    """Where to join the group, and the manifest of the bucket that the sender will broadcast next."""

    host: str
    port: int
    world_size: int
    group: str
    index: int
    nbytes: int
    specs: list[TensorSpec]


def _process_group(backend: str, host: str, port: int, world_size: int, group: str, is_master: bool,
                   timeout_s: float):
    """A process group of its own (not torch's default one, which DeepSpeed or vLLM already own). Ranks are
    handed out by the store in order of arrival: the sender is rank 0, receivers need no rank assignment."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.PrefixStore(group, dist.TCPStore(host, port, world_size, is_master, timeout=timeout,
                                                  wait_for_workers=False))
    rank = 0 if is_master else int(store.add("next_rank", 1))
    if backend == "nccl":
        pg = dist.ProcessGroupNCCL(store, rank, world_size)
    else:
        pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
    return store, pg, rank


class NcclBroadcastTransport:
    """Learner rank 0 broadcasts every bucket to all engine workers (on other GPUs) on a dedicated group.

    `world_size` = 1 + the number of receiving engine workers (rollout workers × tensor-parallel size); the
    group is formed on the first update and kept. `publish` returns at once and broadcasts on a background
    thread, because the receivers only join when the driver hands them the handles; the next `publish` (or
    `wait`) joins that thread. Backend "nccl" needs a GPU on every member; "gloo" runs the same protocol on
    CPU (tests).
    """

    name = "nccl"

    def __init__(self, world_size: int, host: str = "127.0.0.1", port: int = 29555, backend: str = "nccl",
                 group: str = "alignray-weights", timeout_s: float = 600.0):
        self.world_size, self.host, self.port = world_size, host, port
        self.backend, self.group, self.timeout_s = backend, group, timeout_s
        self._pg = self._store = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _device(self) -> torch.device:
        return torch.device("cuda",
                            torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def _ensure_group(self, is_master: bool) -> None:
        if self._pg is None:
            self._store, self._pg, _ = _process_group(self.backend, self.host, self.port, self.world_size,
                                                      self.group, is_master, self.timeout_s)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        self._pg.broadcast(tensor, 0).wait()

    def _send(self, buckets: list[Bucket], device: torch.device) -> None:
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)  # the current device is per thread
            self._ensure_group(is_master=True)
            for bucket in buckets:
                self._broadcast(torch.from_numpy(bucket.buffer).to(device))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # the device copy must outlive the broadcast
        except BaseException as e:  # surfaced by wait()
            self._error = e

    def publish(self, buckets: list[Bucket]) -> list[BroadcastHandle]:
        self.wait()
        handles = [BroadcastHandle(self.host, self.port, self.world_size, self.group, i, b.nbytes,
                                   list(b.specs))
                   for i, b in enumerate(buckets)]
        self._thread = threading.Thread(target=self._send, args=(buckets, self._device()),
                                        daemon=True, name="weights-broadcast")
        self._thread.start()
        return handles

    def wait(self) -> None:
        """Block until the last publish's broadcasts are done; re-raise what went wrong there."""
        if self._thread is not None:
            self._thread.join(self.timeout_s)
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"weight broadcast failed: {err}") from err

    def receive(self, handle: BroadcastHandle) -> NamedTensors:
        """Join the group on first use, then receive this bucket (handles must be received in publish
        order)."""
        if self._pg is None:
            self.host, self.port, self.world_size, self.group = handle.host, handle.port, handle.world_size, \
                handle.group
            self._ensure_group(is_master=False)
        flat = torch.empty(handle.nbytes, dtype=torch.uint8, device=self._device())
        self._broadcast(flat)
        return views(handle.specs, flat)


def make_transport(name: str, *, put: Callable | None = None, get: Callable | None = None,
                   world_size: int = 0, host: str = "127.0.0.1", port: int = 29555) -> Transport:
    """The transport called `name` (config `rollout.vllm.weight_transport`); the sender of an NCCL transport
    needs the group's size and where its store listens, a receiver reads both from the handles."""
    if name == "object_store":
        return ObjectStoreTransport(put=put, get=get)
    if name == "cuda_ipc":
        return CudaIpcTransport()
    if name == "nccl":
        return NcclBroadcastTransport(world_size=world_size, host=host, port=port)
    raise ValueError(f"unknown weight transport {name!r}; choose one of {', '.join(TRANSPORTS)}")
