"""Errors a user can act on. The CLI prints these without a traceback, also when they come from inside a Ray
actor."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError


class AlignrayError(Exception):
    """Base for every error whose message alone tells the user what to fix."""


class ConfigError(AlignrayError):
    """A config file or override names an unknown field or holds a bad value."""


class DataError(AlignrayError):
    """An input file (prompts, preferences) is malformed; the message names file, line and field."""


class SchemaError(AlignrayError):
    """An Arrow batch crossing an actor boundary does not match its schema; the message names the column."""


class RewardError(AlignrayError):
    """A reward scorer raised or returned a non-finite value; the message names the scorer and the sample
    id."""


class LibraryError(Exception):
    """An exception of a library's own class (torch, DeepSpeed, vLLM, a user's module) re-raised at an actor's
    boundary as this class, its message `module.Class: message` (`actors.watch.Watched`). Not a user error: a
    bug or a broken collective, handled as any other.

    Why: the driver unpickles every error result of an actor call — also one it never asks for, when the
    result is dropped — and unpickling a torch class imports torch into the driver, which must stay light;
    a class of a user's module may not even import there."""


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """A pydantic error as the ConfigError message: one line per field, unknown fields with the allowed
    ones."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            parent = _model_at(e["loc"][:-1], root)
            if parent is not None:
                msg += f"; allowed: {', '.join(parent.model_fields)}"
        elif "input" in e and e["type"] not in ("missing",):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


def _model_at(loc: tuple, model: type[BaseModel]) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model
