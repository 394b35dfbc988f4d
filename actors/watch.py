"""No silent hang, actor side: every actor serves `watch_stack()` and `watch_stages()` on a concurrency group
of their own, so they answer while the actor's working thread is busy — or stuck in a reward function, a tool
call, a collective. The driver's watchdog (`actors.watchdog`) asks them.

- `watch_stack()`: where the busy thread is, compact: the innermost frames of user and alignray code (library
  and standard-library frames left out, but for the innermost frame, which says what it waits on).
- `watch_stages()`: the start-up stages this actor has passed (`stage("model built")`), with seconds since it
  started, so a long start is a sequence of lines on the driver, never a blank screen.

An actor class takes these by inheriting `Watched` and being declared with `@ray.remote(**WATCHED)`. Its
methods' errors leave it torch-free: an exception of any class outside Python's own, alignray's and Ray's is
re-raised as `alignray.errors.LibraryError` (why: there).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import sysconfig
import threading
import time
import traceback

import ray

import alignray
import alignray.actors
from alignray.envs.api import ENV_THREAD
from alignray.errors import LibraryError

WATCH_GROUP = "watch"
WATCHED = {"concurrency_groups": {WATCH_GROUP: 1}}
"""Options of `@ray.remote` for a watched actor."""
FRAMES = 6
"""How many frames of user and alignray code a stack report shows (the innermost ones)."""

_STDLIB_DIRS = tuple({os.path.realpath(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")})
_OWN_DIRS = tuple(os.path.realpath(os.path.dirname(m.__file__)) + os.sep for m in (alignray, alignray.actors))


def is_user_code(filename: str) -> bool:
    """A frame of alignray or of the user's own modules (reward functions, environments), not of a library."""
    path = os.path.realpath(filename)
    if path.startswith(_OWN_DIRS):
        return True
    parts = path.split(os.sep)
    return not (filename.startswith("<") or path.startswith(_STDLIB_DIRS) or "site-packages" in parts
                or "dist-packages" in parts)


def compact_stack(frames: list[traceback.FrameSummary], limit: int = FRAMES) -> str:
    """The innermost `limit` frames of user and alignray code, outermost first, one line each
    (`file:line in function: source`); the innermost frame of all is kept when it is a library's."""
    mine = [f for f in frames if is_user_code(f.filename)][-limit:]
    if frames and (not mine or frames[-1] is not mine[-1]):
        mine.append(frames[-1])
    return "\n".join(f"    {f.filename}:{f.lineno} in {f.name}" + (f": {f.line.strip()}" if f.line else "")
                     for f in mine)


def busy_stack(exclude: int) -> str:
    """The stack of the thread doing the actor's work: the other thread whose stack holds the most user and
    alignray frames (the idle threads of Ray's runtime hold none); then that of an environment call in
    progress (`rollout.env`), which that thread is waiting on."""
    best: list[traceback.FrameSummary] = []
    names = {t.ident: t.name for t in threading.enumerate()}
    envs = []
    for ident, frame in sys._current_frames().items():
        if ident == exclude:
            continue
        frames = traceback.extract_stack(frame)
        if names.get(ident, "").startswith(ENV_THREAD):  # an environment's thread: shown only while in a call
            if names[ident] == ENV_THREAD:
                envs.append(frames)
        elif sum(is_user_code(f.filename) for f in frames) > sum(is_user_code(f.filename) for f in best):
            best = frames
    out = compact_stack(best) if best else "    (no busy thread)"
    return "\n".join([out] + [f"  waiting on the environment call:\n{compact_stack(f)}" for f in envs])


PORTABLE_ROOTS = frozenset({"builtins", "alignray", "ray"})
"""Top-level modules whose exception classes may leave an actor as they are."""


def portable(exc: BaseException) -> BaseException:
    """`exc`, or a LibraryError naming its class when that class lives in another module (torch's, a
    user's), so that unpickling it in the driver imports nothing."""
    cls = type(exc)
    if cls.__module__.split(".")[0] in PORTABLE_ROOTS:
        return exc
    return LibraryError(f"{cls.__module__}.{cls.__qualname__}: {exc}")


def _portable_errors(method):
    """`method`, raising `portable(exc)` (chained to `exc`: Ray's remote traceback shows both)."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def call_async(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except Exception as exc:
                out = portable(exc)
                if out is exc:
                    raise
                raise out from exc
        return call_async

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            out = portable(exc)
            if out is exc:
                raise
            raise out from exc
    return call


class Watched:
    """Base class of every alignray actor (see the module docstring)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if inspect.isfunction(member) and (name == "__init__" or not name.startswith("_")):
                setattr(cls, name, _portable_errors(member))

    def pid(self) -> int:
        """This actor's process id (chaos tests kill -9 it; `alignray status` shows it)."""
        return os.getpid()

    def stage(self, name: str) -> None:
        """Record that start-up reached `name` (e.g. "imported", "model built", "DeepSpeed ready")."""
        if not hasattr(self, "_watch_stages"):
            self._watch_stages: list[tuple[str, float]] = []
            self._watch_t0 = time.monotonic()
        self._watch_stages.append((name, time.monotonic() - self._watch_t0))

    def begin_stages(self) -> None:
        """Start the start-up clock now (the first stage's seconds count from here)."""
        self._watch_stages, self._watch_t0 = [], time.monotonic()

    @ray.method(concurrency_group=WATCH_GROUP)
    def watch_stages(self) -> list[tuple[str, float]]:
        return list(getattr(self, "_watch_stages", []))

    @ray.method(concurrency_group=WATCH_GROUP)
    def watch_stack(self) -> str:
        return busy_stack(exclude=threading.get_ident())
