"""Checks the driver runs before Ray starts, so a bad input is one clean line in seconds, not an actor's traceback."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from alignray.config import Config
from alignray.errors import ConfigError
from alignray.models import check_model_source


def check_model(cfg: Config) -> None:
    """`model.path` and `model.tokenizer` name a local folder or a hub model the workers can load."""
    m = cfg.model
    check_model_source("model.path", m.path)
    if m.path and Path(m.path).expanduser().is_dir() and not (Path(m.path).expanduser() / "config.json").is_file():
        raise ConfigError(f"model.path: {m.path} has no config.json (not a Hugging Face model folder)")
    if m.tokenizer and m.tokenizer != m.path:
        check_model_source("model.tokenizer", m.tokenizer)


def check_reward_functions(cfg: Config) -> None:
    """Import every `package.module:function` scorer here, where the driver can: a module that exists but fails to
    import (syntax error, missing dependency) or lacks the function is reported now, naming the scorer. A module the
    driver cannot find at all may still be shipped to the workers (--working-dir, runtime_env) and is left to them."""
    for i, s in enumerate(cfg.reward.scorers):
        if s.type != "function" or not s.function or ":" not in s.function:
            continue
        where = f"reward.scorers[{i}] ({s.name}): function '{s.function}'"
        module_name, fn_name = s.function.split(":", 1)
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, ValueError):  # a parent package that is missing or broken
            found = False
        if not found:
            continue
        try:
            module = importlib.import_module(module_name)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - SyntaxError, a missing dependency, sys.exit()
            raise ConfigError(f"{where}: module {module_name} does not import: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        if not callable(getattr(module, fn_name, None)):
            raise ConfigError(f"{where}: module {module_name} has no function '{fn_name}'")


def preflight(cfg: Config) -> None:
    check_model(cfg)
    check_reward_functions(cfg)
