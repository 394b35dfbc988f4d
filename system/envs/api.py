"""The environment API of multi-turn episodes (`rollout.env`), and how a batch of environments is driven.

A user's environment is a plain Python class (no Ray, no alignray import needed):

    class MyEnv:
        def __init__(self, **env_kwargs): ...           # one instance per episode
        def reset(self, row: dict) -> str: ...          # the first observation, usually row["prompt"]
        def step(self, text: str) -> tuple[str | None, float, bool]: ...   # (observation, reward, done)
        def close(self) -> None: ...                    # optional: the episode is over

`row` holds the prompt file's other fields (JSONL fields, Parquet columns) and `prompt_id`, `prompt`,
`sample_index`. `reset` returning the row's prompt (or None) keeps the prompt's tokens; any other text becomes
the episode's prompt. `step` gets the text the policy wrote this turn and returns the observation to append
(tokenized with the policy tokenizer; None: nothing), the turn's reward and whether the episode is over.
Any method may be `async def`: a batch's calls are then awaited together, so a slow tool does not serialise
the batch; plain methods run one after the other. Every call of a batch's environments runs on one thread of
the batch with one event loop (`EnvThread`: a connection or async client made in one call works in the next),
with a deadline (`rollout.env_timeout_s`), so an environment that hangs cannot hold the rollout call: it
becomes a failure of its episode, reported with where it was stuck.

A failure (an exception, a bad return value, a non-finite reward, a timeout) is never turned into a reward: it
is an `EnvFailure` of that episode, reported by sample id with `reward.on_error` semantics
(`alignray.rollout.episodes`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import math
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from alignray.envs.config import BUILTIN_ENVS
from alignray.errors import ConfigError

ENV_THREAD = "alignray-env"
"""The name of the thread running an environment call (alignray.actors.watch shows that call's stack)."""
STACK_FRAMES = 3
"""Innermost frames of a timed-out call shown in its report."""
GRACE_S = 5.0
"""Extra seconds a batch of async calls gets beyond its deadline before its loop is given up (a coroutine that
blocks the loop cannot be cancelled)."""


class Environment(Protocol):
    def reset(self, row: dict) -> str | None: ...

    def step(self, text: str) -> tuple[str | None, float, bool]: ...


@dataclass
class EnvFailure:
    """What went wrong with one episode's environment (the message names the call and, for a hang, where)."""

    message: str


def resolve_env_class(spec: str) -> type:
    """The class of a built-in name (`calc`) or of `package.module:Class` importable here; raises ValueError
    or ImportError."""
    target = BUILTIN_ENVS.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"environment '{spec}': give 'package.module:Class' or a built-in "
                         f"({', '.join(BUILTIN_ENVS)})")
    module_name, name = target.split(":", 1)
    cls = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(cls, type):
        raise ValueError(f"environment '{spec}': {module_name} has no class '{name}'")
    missing = [m for m in ("reset", "step") if not callable(getattr(cls, m, None))]
    if missing:
        raise ValueError(f"environment '{spec}': class {name} has no {' or '.join(missing)} method")
    return cls


def _where(frames: list) -> str:
    """The innermost STACK_FRAMES frames, innermost first, one `file:line in function` each."""
    summary = [f for frame in frames for f in traceback.extract_stack(frame)][-STACK_FRAMES:]
    return " ← ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in reversed(summary)) or "unknown"


Outcome = tuple[Any, BaseException | None, str | None]
"""(value, the exception raised, or where the call was stuck when its deadline passed)."""


class EnvThread:
    """One daemon thread running one event loop, where every call of a batch's environments runs: the same
    thread and loop from `__init__` through `reset`, the steps and `close` (so a connection or an async client
    made in one call works in the next). It is named ENV_THREAD while a call runs, so the watchdog's stack
    report shows that call. A call stuck past its deadline leaves the thread behind (Python cannot stop it):
    the next calls get a fresh one."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name=f"{ENV_THREAD} (idle)", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, coroutine, timeout: float) -> tuple[Any, str | None]:
        """(the coroutine's value, None), or (None, where the thread is stuck) past `timeout`; raises what
        the coroutine raises."""
        self.thread.name = ENV_THREAD
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout), None
        except concurrent.futures.TimeoutError:
            self.thread.name = f"{ENV_THREAD} (abandoned)"
            stuck = _where([sys._current_frames().get(self.thread.ident)])
            self.close()  # should the call ever return, the thread ends then
            return None, stuck
        finally:
            if self.thread.name == ENV_THREAD:
                self.thread.name = f"{ENV_THREAD} (idle)"

    def close(self) -> None:
        """End the thread (once; a second call does nothing)."""
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # closed meanwhile
                pass


async def _one(thunk: Callable[[], Any]) -> Outcome:
    try:
        return thunk(), None, None
    except Exception as e:  # noqa: BLE001 - reported with the episode
        return None, e, None


async def _together(thunks: list[Callable[[], Any]], timeout: float) -> list[Outcome]:
    """Async thunks (each returns a coroutine) awaited together; a task still running at `timeout` is
    cancelled and reported with where it waits."""
    tasks = [asyncio.ensure_future(t()) for t in thunks]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    out: list[Outcome] = []
    for task in tasks:
        if not task.done():
            out.append((None, None, _where(task.get_stack())))
            task.cancel()
        elif task.exception() is not None:
            out.append((None, task.exception(), None))
        else:
            out.append((task.result(), None, None))
    return out


class EnvBatch:
    """The environments of one batch of episodes: created and reset together, stepped by index, closed."""

    def __init__(self, spec: str, kwargs: dict, timeout_s: float, rows: list[dict]):
        self.spec, self.timeout = spec, timeout_s
        try:
            self.cls = resolve_env_class(spec)
        except Exception as e:  # noqa: BLE001 - e.g. a module only this worker lacks: one line, never retried
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"rollout.env: cannot load '{spec}' on this worker: {type(e).__name__}: "
                              f"{first}") from None
        self.worker = EnvThread()
        self.envs: list[Any] = [None] * len(rows)
        self.failed: dict[int, EnvFailure] = {}
        made = self.call_all([lambda: self.cls(**kwargs) for _ in rows], False)
        for i, (env, error, stuck) in enumerate(made):
            if error is not None or stuck is not None:
                self.failed[i] = self._failure("__init__", error, stuck)
            else:
                self.envs[i] = env
        live = {i: (dict(row),) for i, row in enumerate(rows) if i not in self.failed}
        self.first = self._call("reset", live, _check_reset)

    def call_all(self, thunks: list[Callable[[], Any]], is_async: bool) -> list[Outcome]:
        """Each thunk with a deadline, on the batch's thread: plain ones one after the other (`timeout` each),
        async ones together (`timeout` for all)."""
        if is_async:
            out, stuck = self.worker.run(_together(thunks, self.timeout), self.timeout + GRACE_S)
            if stuck is None:
                return out
            self.worker = EnvThread()  # a coroutine blocked the loop: every call of this batch is lost
            return [(None, None, stuck)] * len(thunks)
        out = []
        for thunk in thunks:
            outcome, stuck = self.worker.run(_one(thunk), self.timeout)
            if stuck is not None:
                self.worker = EnvThread()
                outcome = (None, None, stuck)
            out.append(outcome)
        return out

    def _failure(self, call: str, error: BaseException | None, stuck: str | None) -> EnvFailure:
        if stuck is not None:
            return EnvFailure(f"environment '{self.spec}' {call} timed out after {self.timeout:g}s "
                              f"(rollout.env_timeout_s), stuck at {stuck}")
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return EnvFailure(f"environment '{self.spec}' {call} raised {type(error).__name__}: {text}")

    def _call(self, method: str, args: dict[int, tuple], check: Callable[[Any], Any]) -> dict[int, Any]:
        """`method(*args[i])` on env i for every i in `args`: {i: checked value or EnvFailure}."""
        order = sorted(args)
        is_async = inspect.iscoroutinefunction(getattr(self.cls, method))
        thunks = [(lambda i=i: getattr(self.envs[i], method)(*args[i])) for i in order]
        out: dict[int, Any] = {}
        for i, (value, error, stuck) in zip(order, self.call_all(thunks, is_async), strict=True):
            if error is None and stuck is None:
                try:
                    out[i] = check(value)
                    continue
                except ValueError as e:
                    out[i] = EnvFailure(f"environment '{self.spec}' {method} returned {value!r:.80}: {e}")
                    continue
            out[i] = self._failure(method, error, stuck)
        return out

    def step(self, texts: dict[int, str]) -> dict[int, tuple[str | None, float, bool] | EnvFailure]:
        """One turn: env i sees text i (the policy's turn) and answers (observation, reward, done)."""
        return self._call("step", {i: (t,) for i, t in texts.items()}, _check_step)

    def close(self, indices: list[int]) -> dict[int, EnvFailure]:
        """The episodes are over: `close()` of the environments that define it (a failure there is one of
        its episode's); then the batch's thread ends."""
        try:
            if not callable(getattr(self.cls, "close", None)):
                return {}
            done = self._call("close", {i: () for i in indices}, lambda value: value)
            return {i: v for i, v in done.items() if isinstance(v, EnvFailure)}
        finally:
            self.worker.close()


def _check_reset(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("expected the first observation, a str (or None: the prompt)")
    return value


def _check_step(value: Any) -> tuple[str | None, float, bool]:
    if not (isinstance(value, tuple | list) and len(value) == 3):
        raise ValueError("expected (observation, reward, done)")
    observation, reward, done = value
    if observation is not None and not isinstance(observation, str):
        raise ValueError("the observation must be a str or None")
    try:
        reward = float(reward)
    except (TypeError, ValueError):
        raise ValueError("the reward must be a number") from None
    if not math.isfinite(reward):
        raise ValueError(f"the reward is {reward}")
    return observation, reward, bool(done)
