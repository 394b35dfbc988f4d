"""Prompt sources: a built-in set for the quickstart, or a file validated row by row at the edge.

Formats (`data.prompts`): JSONL (one object per line), Parquet (a file or a folder of files), a folder written
by `datasets.Dataset.save_to_disk` (needs the `datasets` package). A row holds either a string under
`prompt_key`, or a chat under `messages_key` (a list of {role, content}) rendered to text by `alignray.chat`.

Every bad row is either an error naming file, line (JSONL) or row (tables, counted from 0) and field, or (with
`data.on_bad_row: skip`) dropped and counted — never a traceback from inside an actor. A prompt's id is its
line number (JSONL) or its row index (tables), so any sample traces back to its source.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from alignray.chat import ChatRenderer, check_messages
from alignray.config_sections import DataConfig
from alignray.errors import DataError
from alignray.schema import TOKENS, check_batch, list_array

_SUBJECTS = ["the sea", "a cat", "my garden", "winter", "an old town", "the moon", "a train", "coffee",
             "music", "the forest", "a storm", "bread", "a river", "the city", "snow", "a friend",
             "the desert", "rain", "a library", "the mountains"]
_ASKS = ["Say something about {}.", "Describe {}.", "Write a line on {}.", "Tell me of {}.", "Sing about {}."]
PARQUET_MAGIC = b"PAR1"
NUL = b"\x00"


def builtin_prompts(name: str) -> list[str]:
    if name == "calc":  # arithmetic questions for the calculator environment (rollout.env: calc)
        from alignray.envs.calc import calc_prompts

        return calc_prompts()
    if name != "vowels":
        raise DataError(f"data.prompts: unknown built-in prompt set 'builtin:{name}'; "
                        "available: builtin:vowels, builtin:calc")
    return [ask.format(s) for s in _SUBJECTS for ask in _ASKS]


@dataclass(frozen=True)
class BadRow:
    reason: str  # short key for the skip counter
    message: str  # names file, line and field


@dataclass
class PromptSet:
    """Validated prompts as an Arrow table (prompt_id, prompt, prompt_tokens) plus what was skipped and
    why."""

    table: pa.Table
    source: str
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return self.table.num_rows

    def batch(self, indices: list[int]) -> pa.RecordBatch:
        """The prompt batch for these row indices (a compact copy, so Ray ships only these rows)."""
        taken = self.table.take(pa.array(indices, type=pa.int64())).combine_chunks()
        batch = taken.to_batches()[0] if taken.num_rows else pa.RecordBatch.from_pylist([],
                                                                                        schema=taken.schema)
        return check_batch(batch, "prompt", f"prompts from {self.source}")


def jsonl_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for every non-blank line; a line that is not JSON or not UTF-8 yields a
    BadRow instead, so each caller decides whether that is fatal (preference data) or skippable by policy
    (prompts). A NUL byte means a binary file, not a bad line: that is a DataError at once."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if NUL in raw:
                raise DataError(f"{path}:{lineno}: binary data (a NUL byte at column {raw.index(NUL) + 1}); "
                                "expected JSONL text (Parquet and `datasets` folders are read by their "
                                "format)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, BadRow("not_utf8",
                                     f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                                                 f"byte column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, BadRow("bad_json",
                                     f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == PARQUET_MAGIC


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def read_table(path: Path, split: str = "train") -> pa.Table:
    """A Parquet file or folder, or a saved `datasets` folder (split `split` of a DatasetDict), as an Arrow
    table."""
    if _is_saved_dataset(path):
        try:
            import datasets
        except ImportError:
            raise DataError(f"{path}: a saved `datasets` folder; install the `datasets` package to read it "
                            "(pip install 'alignray[datasets]')") from None
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - corrupt or foreign folder: one line naming it
            raise DataError(f"{path}: cannot load the saved dataset: {type(e).__name__}: {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"data.split: {path} has the splits {sorted(ds)}, not '{split}'")
            ds = ds[split]
        return ds.with_format("arrow")[:]
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable Parquet file or folder: {e}") from None


def _records(path: Path, cfg: DataConfig, every_column: bool = False) -> Iterator[tuple[int, str, object]]:
    """(prompt id, where — for messages —, row dict or BadRow) for every row of the file, whatever its
    format; a table's rows hold only the prompt or messages column unless `every_column`."""
    if not path.exists():
        raise DataError(f"data.prompts: file not found: {path}")
    if path.is_dir() or _is_parquet(path):
        table = read_table(path, cfg.split)
        wanted = [c for c in (cfg.prompt_key, cfg.messages_key) if c in table.column_names]
        if not wanted:
            raise DataError(f"{path}: no column '{cfg.prompt_key}' or '{cfg.messages_key}' "
                            f"(columns: {table.column_names})")
        for i, row in enumerate((table if every_column else table.select(wanted)).to_pylist()):
            yield i, f"{path}: row {i}", {k: v for k, v in row.items() if v is not None}
        return
    for lineno, obj in jsonl_records(path):
        yield lineno, f"{path}:{lineno}", obj


def _prompt_of(obj: object, where: str, cfg: DataConfig, render: ChatRenderer) -> str | BadRow:
    """The prompt text of one row, or what is wrong with it."""
    if isinstance(obj, BadRow):
        return obj
    if not isinstance(obj, dict):
        return BadRow("not_object", f"{where}: expected a JSON object, got {type(obj).__name__}")
    key = cfg.prompt_key
    if key not in obj and cfg.messages_key in obj:
        problem = check_messages(obj[cfg.messages_key])
        if problem:
            return BadRow("bad_messages", f"{where}: field '{cfg.messages_key}' {problem}")
        try:
            text = render(obj[cfg.messages_key])
        except Exception as e:  # noqa: BLE001 - a template that raises (e.g. on role order) names the row
            return BadRow("chat_template",
                          f"{where}: the chat template failed on field '{cfg.messages_key}': "
                                           f"{type(e).__name__}: {e}")
        if not text.strip():
            return BadRow("empty_prompt",
                          f"{where}: the chat template rendered field '{cfg.messages_key}' empty")
        return text
    if key not in obj:
        return BadRow("missing_field",
                      f"{where}: missing field '{key}' or '{cfg.messages_key}' (fields: {sorted(obj)})")
    if not isinstance(obj[key], str):
        return BadRow("not_string", f"{where}: field '{key}' must be a string, got {type(obj[key]).__name__}")
    if not obj[key].strip():
        return BadRow("empty_prompt", f"{where}: field '{key}' is empty")
    return obj[key]


def _rows(cfg: DataConfig, every_column: bool = False) -> Iterator[tuple[int, str, object]]:
    if cfg.prompts.startswith("builtin:"):
        return ((i, f"{cfg.prompts}:{i}", {cfg.prompt_key: text})
                for i, text in enumerate(builtin_prompts(cfg.prompts.split(":", 1)[1]), start=1))
    return _records(Path(cfg.prompts), cfg, every_column)


def check_prompt_file(cfg: DataConfig) -> None:
    """What can be wrong with the prompts before any tokenizer exists — a missing or binary file, a line that
    is not UTF-8 or JSON, missing fields, malformed messages, a missing template file — raised now, so the
    driver answers in a second (no torch, no transformers). Lengths and template rendering are checked by
    `load_prompts`."""
    ChatRenderer(cfg.chat_template, None)
    usable = 0
    for _, where, obj in _rows(cfg):
        value = _prompt_of(obj, where, cfg, lambda messages: "<chat>")
        if isinstance(value, BadRow) and cfg.on_bad_row == "error":
            raise DataError(f"{value.message} (set data.on_bad_row=skip to drop such rows)")
        usable += not isinstance(value, BadRow)
    if not usable:
        raise DataError(f"{cfg.prompts}: no usable prompts")


def load_prompts(cfg: DataConfig, tokenizer, keep_fields: bool = False) -> PromptSet:
    """Read, validate, render (chat rows) and tokenize every prompt once, before any actor starts.
    `keep_fields` (episodes: `rollout.env`): the row's other fields travel with it as the JSON column
    `fields`, for the environment's `reset`."""
    source = cfg.prompts
    rows = _rows(cfg, keep_fields)
    fields: list[str] = []
    render = ChatRenderer(cfg.chat_template, tokenizer)
    ids, texts, tokens = [], [], []
    skipped: Counter = Counter()
    for row_id, where, obj in rows:
        value = _prompt_of(obj, where, cfg, render)
        if isinstance(value, str):
            toks = tokenizer(value, add_special_tokens=False)["input_ids"]
            if len(toks) > cfg.max_prompt_tokens:
                value = BadRow("too_long", f"{where}: the prompt is {len(toks)} tokens, longer than "
                                           f"data.max_prompt_tokens={cfg.max_prompt_tokens}")
        if isinstance(value, BadRow):
            if cfg.on_bad_row == "error":
                raise DataError(f"{value.message} (set data.on_bad_row=skip to drop such rows)")
            skipped[value.reason] += 1
            continue
        ids.append(row_id)
        texts.append(value)
        tokens.append(toks)
        if keep_fields:
            other = {k: v for k, v in obj.items() if k not in (cfg.prompt_key, cfg.messages_key)}
            fields.append(json.dumps(other, default=str))
    if not ids:
        raise DataError(f"{source}: no usable prompts (skipped: {dict(skipped) or 'none'})")
    table = pa.table({
        "prompt_id": pa.array(ids, type=pa.int64()),
        "prompt": pa.array(texts, type=pa.string()),
        "prompt_tokens": list_array(tokens, TOKENS.value_type),
        **({"fields": pa.array(fields, type=pa.string())} if keep_fields else {}),
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
