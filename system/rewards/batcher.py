"""Batching across callers, for the reward-model service (alignray.actors.rm_server): many callers' score
requests become few forwards.

A request that arrives opens a batch; requests of other callers that arrive within `wait_s` (or are already
queued) join it until it holds `max_batch_size` samples. The batch's requests are grouped by scorer,
concatenated, run through the model in forwards of at most `max_batch_size` samples, and the columns split
back per request. Forwards run one at a time on one thread of their own (torch modules are not safe to call
from several threads at once); requests arriving meanwhile queue up and make the next batch larger.

Pure asyncio, numpy and pydantic: the model call is injected (`forward`), so the rule is testable without
Ray or torch. The service's config section (`reward.service`) is here too, next to the rule its fields set.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RewardServiceConfig(BaseModel):
    """Reward models as a shared service: every `type: model` scorer (path or ensemble) is loaded once per
    server and scored there for all reward workers, requests of several workers batched into one forward
    (alignray.actors.rm_server); function scorers stay in the workers."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = False
    """Score the model scorers on `num_servers` servers instead of a copy in every reward worker."""
    num_servers: int = Field(1, ge=1)
    """Servers, each holding every model scorer; a worker's calls go round robin over the ready ones and fail
    over from a lost one (`alignray scale RUN_DIR --rm-server K` resizes)."""
    max_batch_size: int = Field(64, ge=1)
    """Samples per forward at most, several callers' requests together (a scorer's `batch_size` is unused)."""
    batch_wait_ms: float = Field(5.0, ge=0)
    """Once a request arrives, how long a server waits for other callers' requests to fill the batch."""
    num_cpus: float = Field(1.0, gt=0)
    """CPUs reserved per server."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs reserved per server (> 0: its models run on that GPU)."""
    torch_threads: int = Field(1, ge=1)
    """torch threads of a server's forward."""


Forward = Callable[[str, list[str], list[str]], dict[str, np.ndarray]]
"""`forward(scorer, prompts, responses)` → columns [n] each ("reward" at least): one model forward."""


@dataclass
class Request:
    scorer: str
    prompts: list[str]
    responses: list[str]
    future: asyncio.Future = field(repr=False)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class BatchStats:
    """Counters since the start: calls, samples, batches (gatherings of queued requests), forwards."""

    requests: int = 0
    samples: int = 0
    batches: int = 0
    forwards: int = 0
    largest_forward: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"requests": self.requests, "samples": self.samples, "batches": self.batches,
                "forwards": self.forwards, "largest_forward": self.largest_forward,
                "mean_batch_size": self.samples / self.forwards if self.forwards else 0.0,
                "requests_per_batch": self.requests / self.batches if self.batches else 0.0}


class Batcher:
    """Concurrent `submit` calls on one event loop → batched forwards on one thread (see the module
    docstring)."""

    def __init__(self, forward: Forward, max_batch_size: int, wait_s: float):
        self.forward, self.max_batch_size, self.wait_s = forward, max_batch_size, wait_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[Request] | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignray-rm-forward")

    async def submit(self, scorer: str, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """The columns of this request's samples, computed in a batch with whatever else is queued."""
        if len(prompts) != len(responses):
            raise ValueError(f"score got {len(prompts)} prompts but {len(responses)} responses")
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve_forever())
        request = Request(scorer, list(prompts), list(responses), loop.create_future())
        self.stats.requests += 1
        self.stats.samples += len(request)
        self._queue.put_nowait(request)
        return await request.future

    async def _serve_forever(self) -> None:
        while True:
            batch = await self._gather()
            try:
                await self._run(batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must reach the callers, never strand them
                for request in batch:
                    _fail(request, exc)

    async def _gather(self) -> list[Request]:
        """The first queued request, then others until the batch is full or `wait_s` has passed."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        size, deadline = len(batch[0]), loop.time() + self.wait_s
        while size < self.max_batch_size:
            try:
                request = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            batch.append(request)
            size += len(request)
        self.stats.batches += 1
        return batch

    async def _run(self, batch: list[Request]) -> None:
        """Per scorer: the requests' samples concatenated, forwarded on the model thread, split back."""
        loop = asyncio.get_running_loop()
        by_scorer: dict[str, list[Request]] = {}
        for request in batch:
            by_scorer.setdefault(request.scorer, []).append(request)
        for scorer, requests in by_scorer.items():
            prompts = list(itertools.chain.from_iterable(r.prompts for r in requests))
            responses = list(itertools.chain.from_iterable(r.responses for r in requests))
            try:
                columns = await loop.run_in_executor(self._thread, self._forwards, scorer, prompts, responses)
            except Exception as exc:  # noqa: BLE001 - the model's error goes to each caller of this scorer
                for request in requests:
                    _fail(request, exc)
                continue
            start = 0
            for request in requests:
                end = start + len(request)
                if not request.future.done():  # a caller that was cancelled meanwhile
                    request.future.set_result({k: v[start:end] for k, v in columns.items()})
                start = end

    def _forwards(self, scorer: str, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """On the model thread: forwards of at most max_batch_size samples; the columns concatenated."""
        if not prompts:
            return {"reward": np.zeros(0, dtype=np.float32)}
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = slice(start, start + self.max_batch_size)
            out = self.forward(scorer, prompts[chunk], responses[chunk])
            self.stats.forwards += 1
            self.stats.largest_forward = max(self.stats.largest_forward, len(prompts[chunk]))
            for key, value in out.items():
                parts.setdefault(key, []).append(np.asarray(value, dtype=np.float32))
        return {key: np.concatenate(values) for key, values in parts.items()}

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _fail(request: Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
