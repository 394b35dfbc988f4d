"""Checks the driver runs before Ray starts, so a bad input is one clean line in seconds, not an actor's
traceback.

Light on purpose: no torch, no transformers (importing them alone takes seconds), so the answer comes first.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path

from alignray.config import Config
from alignray.errors import ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")


def _looks_local(source: str) -> bool:
    return (source.startswith(("/", "./", "../", "~", ".")) or source.count("/") > 1 or "\\" in source
            or not HUB_ID.match(source) or ".." in source)


def check_model_source(field: str, source: str | None) -> None:
    """Fail in a second, naming the field, when `source` can be neither a local folder nor a hub model.

    Without this, a missing local path reaches the hub client as a repo id (`OSError: Repo id must use
    alphanumeric chars`), and an unreachable hub name retries for about a minute before failing inside an
    actor."""
    if not source:
        return
    path = Path(source).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"{field}: {source} is a file; give the model's folder (the one with config.json)")
    if _looks_local(source):
        raise ConfigError(f"{field}: {source}: no such folder (a local path; hub names look like org/name)")
    import huggingface_hub

    if any(huggingface_hub.try_to_load_from_cache(source, name) for name in ("config.json",
                                                                             "tokenizer_config.json")):
        return  # in the local hub cache
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ConfigError(f"{field}: {source}: not a local folder, and not in the hub cache "
                          "(HF_HUB_OFFLINE is set)")
    try:
        huggingface_hub.model_info(source, timeout=10)
    except Exception as e:  # noqa: BLE001 - any failure means the workers could not load it either
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{field}: {source}: not a local folder, and the hub cannot provide it "
                          f"({type(e).__name__}: {first})") from None


def check_model(cfg: Config) -> None:
    """`model.path` and `model.tokenizer` name a local folder or a hub model the workers can load."""
    m = cfg.model
    check_model_source("model.path", m.path)
    if (m.path and Path(m.path).expanduser().is_dir()
            and not (Path(m.path).expanduser() / "config.json").is_file()):
        raise ConfigError(f"model.path: {m.path} has no config.json (not a Hugging Face model folder)")
    if m.tokenizer and m.tokenizer != m.path:
        check_model_source("model.tokenizer", m.tokenizer)


def findable(module_name: str) -> bool:
    """The driver can find the module (one only the workers have is left to them)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def check_reward_functions(cfg: Config) -> None:
    """Import every `package.module:function` scorer here, where the driver can: a module that exists but
    fails to import (syntax error, missing dependency) or lacks the function is reported now, naming the
    scorer. A module the driver cannot find at all may still be shipped to the workers (--working-dir,
    runtime_env) and is left to them."""
    for i, s in enumerate(cfg.reward.scorers):
        if s.type != "function" or not s.function or ":" not in s.function:
            continue
        where = f"reward.scorers[{i}] ({s.name}): function '{s.function}'"
        module_name, fn_name = s.function.split(":", 1)
        if not findable(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - SyntaxError, a missing dependency, sys.exit()
            raise ConfigError(f"{where}: module {module_name} does not import: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        if not callable(getattr(module, fn_name, None)):
            raise ConfigError(f"{where}: module {module_name} has no function '{fn_name}'")


def check_environment(cfg: Config) -> None:
    """`rollout.env` as `check_reward_functions` checks reward functions: a module the driver finds must
    import and hold a class with `reset` and `step`; one only the workers have is left to them (their first
    rollout then fails with one line naming it)."""
    spec = cfg.rollout.env
    if not spec:
        return
    from alignray.envs.config import BUILTIN_ENVS

    module_name = BUILTIN_ENVS.get(spec, spec).split(":", 1)[0]
    if not findable(module_name):
        return
    from alignray.envs.api import resolve_env_class

    try:
        resolve_env_class(spec)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - SyntaxError, a missing dependency, no such class
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"rollout.env: {first}" if type(e) is ValueError else
                          f"rollout.env: '{spec}': module {module_name} does not import: "
                          f"{type(e).__name__}: {first}") from None


def preflight(cfg: Config) -> None:
    from alignray.data import check_prompt_file

    check_model(cfg)
    check_reward_functions(cfg)
    check_environment(cfg)
    check_prompt_file(cfg.data)
