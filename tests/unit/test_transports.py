"""Weight transports: the object-store path for real through Ray, the broadcast protocol on CPU (gloo), and
the GPU transports (CUDA IPC, NCCL) on a GPU only."""

from __future__ import annotations

import io
import multiprocessing as mp
import socket
import threading

import pytest
import torch

from alignray.rollout.transports import (
    CudaIpcTransport,
    NcclBroadcastTransport,
    ObjectStoreTransport,
    make_transport,
)
from alignray.rollout.weights import pack_state

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a CUDA GPU (none on this CPU machine)")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2,
                                    reason="needs 2 CUDA GPUs (none on this CPU machine)")


def sample_state() -> dict[str, torch.Tensor]:
    """Mixed dtypes and shapes, odd sizes included, so alignment and views are exercised."""
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(259, 64, generator=g),
        "layer.0.bias": torch.randn(7, generator=g),
        "layer.0.half": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "layer.0.count": torch.arange(11, dtype=torch.int64),
        "scalar": torch.tensor(3.5),
    }


def assert_same(received: list[tuple[str, torch.Tensor]], state: dict[str, torch.Tensor]) -> None:
    assert [n for n, _ in received] == list(state)
    for name, tensor in received:
        assert tensor.dtype == state[name].dtype and tensor.shape == state[name].shape, name
        assert torch.equal(tensor.cpu(), state[name]), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_object_store_round_trip_through_ray(ray_cluster):
    """Learner side ray.put's each bucket once; the receiver gets ObjectRefs and reads the tensors back
    exactly."""
    state = sample_state()
    buckets = pack_state(state.items(), bucket_mb=0.02)  # small buckets: several of them
    assert len(buckets) > 1
    sender = make_transport("object_store", put=ray_cluster.put)
    handles = sender.publish(buckets)
    assert all(isinstance(h, ray_cluster.ObjectRef) for h in handles)
    receiver = ObjectStoreTransport(get=ray_cluster.get)
    received = [pair for h in handles for pair in receiver.receive(h)]
    assert_same(received, state)


def test_object_store_needs_put_and_get():
    with pytest.raises(RuntimeError, match="put"):
        ObjectStoreTransport().publish([])
    with pytest.raises(RuntimeError, match="get"):
        ObjectStoreTransport().fetch(None)


def test_unknown_transport_is_named():
    with pytest.raises(ValueError, match="object_store, cuda_ipc, nccl"):
        make_transport("carrier_pigeon")


def broadcast_round_trip(backend: str, state: dict[str, torch.Tensor], receivers: int = 1) -> list[list]:
    """Sender publishes (its broadcast runs on a thread); each receiver joins the group from the handles
    alone. Two rounds: the group is formed once and reused."""
    buckets = pack_state(state.items(), bucket_mb=0.02)
    sender = NcclBroadcastTransport(world_size=1 + receivers, port=free_port(), backend=backend, timeout_s=60)
    clients = [NcclBroadcastTransport(world_size=0, backend=backend, timeout_s=60) for _ in range(receivers)]
    results: list[list] = [[] for _ in range(receivers)]

    def receive(slot: int, handles: list) -> None:
        if backend == "nccl":
            torch.cuda.set_device(1 + slot)  # one GPU per receiver, the sender keeps GPU 0
        results[slot] = [(n, t.clone()) for h in handles for n, t in clients[slot].receive(h)]

    for _ in range(2):
        handles = sender.publish(buckets)
        threads = [threading.Thread(target=receive, args=(i, handles)) for i in range(receivers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        sender.wait()
    return results


def test_broadcast_protocol_on_cpu_with_gloo():
    """The NCCL transport's protocol (own store, ranks by arrival, background send) run with the gloo
    backend."""
    state = sample_state()
    for received in broadcast_round_trip("gloo", state, receivers=2):
        assert_same(received, state)


def receive_and_compare(handles: list, expected: bytes, results) -> None:
    """The engine's side, in a process of its own (CUDA refuses to open an IPC handle in the process that made
    it): open every handle on this process's current GPU, compare with the state the sender packed
    (`torch.save` bytes), put ("ok", all on GPU, count) or ("error", what went wrong) on `results`."""
    try:
        state = torch.load(io.BytesIO(expected))
        received = [(name, t.clone()) for h in handles for name, t in CudaIpcTransport().receive(h)]
        torch.cuda.synchronize()
        on_gpu = all(t.is_cuda for _, t in received)
        assert_same(received, state)
        results.put(("ok", on_gpu, len(received)))
    except BaseException as e:  # noqa: BLE001 - reported to the test process
        results.put(("error", f"{type(e).__name__}: {e}", 0))


@pytest.mark.gpu
@needs_gpu
def test_cuda_ipc_round_trip_across_processes():
    """As production uses it: the sender (learner rank 0) copies its buckets to its GPU and publishes IPC
    handles; a spawned process (the engine) opens them by `rebuild_cuda_tensor` on the same GPU and compares;
    the sender keeps its buffers alive until the receiver is done."""
    state = sample_state()
    sender = CudaIpcTransport()
    handles = sender.publish(pack_state(state.items(), bucket_mb=0.02))
    assert len(handles) > 1
    expected = io.BytesIO()
    torch.save(state, expected)
    ctx = mp.get_context("spawn")  # a CUDA context cannot be forked
    results = ctx.Queue()
    receiver = ctx.Process(target=receive_and_compare, args=(handles, expected.getvalue(), results))
    receiver.start()
    receiver.join()  # the result is small: it is in the queue's pipe once the process has exited
    assert receiver.exitcode == 0, f"the receiving process died (exit code {receiver.exitcode})"
    outcome = results.get_nowait()
    assert outcome == ("ok", True, len(state)), outcome
    del sender  # the buffers may go only now


@pytest.mark.gpu
@needs_two_gpus
def test_nccl_broadcast_round_trip():
    """Learner rank 0 on GPU 0 broadcasts to an engine worker on GPU 1 (NCCL wants one GPU per rank)."""
    state = sample_state()
    for received in broadcast_round_trip("nccl", state):
        assert_same(received, state)
