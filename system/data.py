"""Prompt sources: a built-in set for the quickstart, or a JSONL file validated line by line at the edge.

Every bad row is either an error naming file, line and field, or (with `data.on_bad_row: skip`) dropped and counted —
never a traceback from inside an actor. A prompt's id is its line number, so any sample traces back to its source.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from alignray.config import DataConfig
from alignray.errors import DataError
from alignray.schema import TOKENS, check_batch, list_array

_SUBJECTS = ["the sea", "a cat", "my garden", "winter", "an old town", "the moon", "a train", "coffee", "music",
             "the forest", "a storm", "bread", "a river", "the city", "snow", "a friend", "the desert", "rain",
             "a library", "the mountains"]
_ASKS = ["Say something about {}.", "Describe {}.", "Write a line on {}.", "Tell me of {}.", "Sing about {}."]


def builtin_prompts(name: str) -> list[str]:
    if name != "vowels":
        raise DataError(f"data.prompts: unknown built-in prompt set 'builtin:{name}'; available: builtin:vowels")
    return [ask.format(s) for s in _SUBJECTS for ask in _ASKS]


@dataclass(frozen=True)
class BadRow:
    reason: str  # short key for the skip counter
    message: str  # names file, line and field


@dataclass
class PromptSet:
    """Validated prompts as an Arrow table (prompt_id, prompt, prompt_tokens) plus what was skipped and why."""

    table: pa.Table
    source: str
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return self.table.num_rows

    def batch(self, indices: list[int]) -> pa.RecordBatch:
        """The prompt batch for these row indices (a compact copy, so Ray ships only these rows)."""
        taken = self.table.take(pa.array(indices, type=pa.int64())).combine_chunks()
        batch = taken.to_batches()[0] if taken.num_rows else pa.RecordBatch.from_pylist([], schema=taken.schema)
        return check_batch(batch, "prompt", f"prompts from {self.source}")


def jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line; a line that is not JSON yields a BadRow instead, so
    each caller decides whether that is fatal (preference data) or skippable by policy (prompts)."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, BadRow("bad_json", f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")


def _read_jsonl(path: Path, key: str) -> list[tuple[int, object]]:
    if not path.is_file():
        raise DataError(f"data.prompts: file not found: {path}")
    rows = []
    for lineno, obj in jsonl_records(path):
        if isinstance(obj, BadRow):
            rows.append((lineno, obj))
        elif not isinstance(obj, dict):
            rows.append((lineno, BadRow("not_object", f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")))
        elif key not in obj:
            rows.append((lineno, BadRow("missing_field", f"{path}:{lineno}: missing field '{key}' (fields: {sorted(obj)})")))
        elif not isinstance(obj[key], str):
            rows.append((lineno, BadRow("not_string", f"{path}:{lineno}: field '{key}' must be a string, "
                                           f"got {type(obj[key]).__name__}")))
        elif not obj[key].strip():
            rows.append((lineno, BadRow("empty_prompt", f"{path}:{lineno}: field '{key}' is empty")))
        else:
            rows.append((lineno, obj[key]))
    return rows


def load_prompts(cfg: DataConfig, tokenizer) -> PromptSet:
    """Read, validate and tokenize every prompt once, before any actor starts."""
    if cfg.prompts.startswith("builtin:"):
        rows: list[tuple[int, object]] = list(enumerate(builtin_prompts(cfg.prompts.split(":", 1)[1]), start=1))
        source = cfg.prompts
    else:
        source = cfg.prompts
        rows = _read_jsonl(Path(cfg.prompts), cfg.prompt_key)
    ids, texts, tokens = [], [], []
    skipped: Counter = Counter()
    for lineno, value in rows:
        if isinstance(value, str):
            toks = tokenizer(value, add_special_tokens=False)["input_ids"]
            if len(toks) > cfg.max_prompt_tokens:
                value = BadRow("too_long", f"{source}:{lineno}: field '{cfg.prompt_key}' is {len(toks)} tokens, "
                                           f"longer than data.max_prompt_tokens={cfg.max_prompt_tokens}")
        if isinstance(value, BadRow):
            if cfg.on_bad_row == "error":
                raise DataError(f"{value.message} (set data.on_bad_row=skip to drop such rows)")
            skipped[value.reason] += 1
            continue
        ids.append(lineno)
        texts.append(value)
        tokens.append(toks)
    if not ids:
        raise DataError(f"{source}: no usable prompts (skipped: {dict(skipped) or 'none'})")
    table = pa.table({
        "prompt_id": pa.array(ids, type=pa.int64()),
        "prompt": pa.array(texts, type=pa.string()),
        "prompt_tokens": list_array(tokens, TOKENS.value_type),
    })
    return PromptSet(table, source, skipped)


class PromptSampler:
    """Epoch-wise (optionally shuffled) order over row indices; its position is part of a checkpoint."""

    def __init__(self, size: int, seed: int, shuffle: bool):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.cursor == self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._make_order()
            n = min(k - len(out), self.size - self.cursor)
            out.extend(self._order[self.cursor: self.cursor + n])
            self.cursor += n
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._make_order()
