"""Preference data: JSONL or Parquet rows, a Hugging Face `datasets` name where a hub is reachable, or
`builtin:NAME`.

Row schema (one JSON object per line):
  prompt, chosen, rejected: str                          required
  chosen_<attr>, rejected_<attr>: number | str | bool    optional spurious attribute per response
                                                         (named columns)
  chosen_ratings, rejected_ratings: {rule: number}       optional per-rule ratings (multi-head training),
                                                         same rules
  counterfactual: {<attr>: str}                          optional: the chosen response with only
                                                         <attr> changed
Computed attributes (no column needed): length_chars, length_words, length_tokens (needs a tokenizer).
Every validation error names the file, the line (1-based; Parquet: row, 0-based) and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alignray.data import BadRow, jsonl_records
from alignray.errors import DataError
from alignray.rm.builtin import builtin_preferences
from alignray.rm.pairs import PreferenceData

COMPUTED_ATTRIBUTES = ("length_chars", "length_words", "length_tokens")
RESERVED = {"prompt", "chosen", "rejected", "chosen_ratings", "rejected_ratings", "counterfactual"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_rows(rows: Iterable[tuple[str, Any]], attributes: Sequence[str] | None) -> PreferenceData:
    prompts, chosen, rejected = [], [], []
    attr_values: dict[str, list] = {}
    rating_values: dict[str, list] = {}
    counterfactuals: dict[str, list] = {}
    rules: list[str] | None = None
    for n, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: missing field '{key}'")
            if not isinstance(row[key], str):
                raise DataError(f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}")
        if attributes is None:  # auto-detect named attribute columns from the first row
            attributes = sorted(k[len("chosen_"):] for k in row
                                if k.startswith("chosen_") and k not in RESERVED
                                and f"rejected_{k[len('chosen_'):]}" in row)
            attr_values = {a: [] for a in attributes}
        for name in attributes:
            attr_values.setdefault(name, [])
            pair = []
            for side in ("chosen", "rejected"):
                key = f"{side}_{name}"
                if key not in row:
                    raise DataError(f"{where}: missing field '{key}' (attribute '{name}')")
                if not (_is_number(row[key]) or isinstance(row[key], str | bool)):
                    raise DataError(f"{where}: field '{key}' must be a finite number, string or bool, "
                                    f"got {row[key]!r}")
                pair.append(row[key])
            attr_values[name].append(pair)
        has_ratings = "chosen_ratings" in row or "rejected_ratings" in row
        if rules is None and n == 0 and has_ratings:
            rules = list(row.get("chosen_ratings") or {})
        if rules is not None:
            for side in ("chosen_ratings", "rejected_ratings"):
                value = row.get(side)
                if not isinstance(value, dict):
                    raise DataError(f"{where}: field '{side}' must be an object {{rule: rating}}, "
                                    f"got {value!r}")
                if sorted(value) != sorted(rules):
                    raise DataError(f"{where}: field '{side}' has rules {sorted(value)}, "
                                    f"expected {sorted(rules)}")
                for rule, rating in value.items():
                    if not _is_number(rating):
                        raise DataError(f"{where}: field '{side}.{rule}' must be a finite number, "
                                        f"got {rating!r}")
            for rule in rules:
                rating_values.setdefault(rule, []).append([row["chosen_ratings"][rule],
                                                           row["rejected_ratings"][rule]])
        elif has_ratings:
            raise DataError(f"{where}: field 'chosen_ratings' appears but the first row has no ratings")
        cf = row.get("counterfactual") or {}
        if not isinstance(cf, dict) or not all(isinstance(v, str) for v in cf.values()):
            raise DataError(f"{where}: field 'counterfactual' must be an object {{attribute: response}}")
        for name in set(cf) | set(counterfactuals):
            counterfactuals.setdefault(name, [None] * n).append(cf.get(name))
        prompts.append(row["prompt"])
        chosen.append(row["chosen"])
        rejected.append(row["rejected"])
    if not prompts:
        raise DataError("no preference rows found")
    attrs = {k: np.array(v) for k, v in attr_values.items()}
    ratings = {k: np.array(v, dtype=float) for k, v in rating_values.items()}
    return PreferenceData(prompts, chosen, rejected, attrs, ratings, counterfactuals)


def _jsonl_rows(path: Path):
    for line_no, row in jsonl_records(path):
        if isinstance(row, BadRow):
            raise DataError(row.message)
        yield f"{path}:{line_no}", row


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


def _hub_rows(name: str, split: str):
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{name}: no such local file, and the 'datasets' package (needed for hub names) "
                        "is not installed") from exc
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(f"{name}: no such local file and the hub dataset could not be loaded "
                        f"(offline, or a wrong name/split?): {exc}") from exc
    for i, row in enumerate(dataset):
        yield f"{name}[{split}] row {i}", row


def compute_attribute(name: str, texts: Sequence[str], tokenizer=None) -> np.ndarray:
    """length_chars, length_words (whitespace split) or length_tokens (tokenizer, no special tokens)."""
    if name == "length_chars":
        return np.array([len(t) for t in texts], dtype=float)
    if name == "length_words":
        return np.array([len(t.split()) for t in texts], dtype=float)
    if name == "length_tokens":
        if tokenizer is None:
            raise DataError("attribute 'length_tokens' needs a tokenizer")
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return np.array([len(x) for x in ids], dtype=float)
    raise DataError(f"unknown computed attribute '{name}': use one of {', '.join(COMPUTED_ATTRIBUTES)}")


def add_computed_attributes(data: PreferenceData, names: Sequence[str], tokenizer=None) -> PreferenceData:
    for name in names:
        data.attributes[name] = np.stack([compute_attribute(name, data.chosen, tokenizer),
                                          compute_attribute(name, data.rejected, tokenizer)], axis=1)
    return data


def load_preferences(source: str | Path, attributes: Sequence[str] | None = None,
                     computed: Sequence[str] = (), tokenizer=None, split: str = "train") -> PreferenceData:
    """Load preference pairs from a .jsonl/.json-lines file, a .parquet file, or a hub dataset name.

    attributes: named attribute columns to read (chosen_<a>/rejected_<a>); None auto-detects them from the
    first row. computed: attributes computed from the text (see COMPUTED_ATTRIBUTES). `builtin:NAME`: an
    embedded set (alignray.rm.builtin)."""
    if str(source).startswith("builtin:"):
        return add_computed_attributes(builtin_preferences(str(source)), computed, tokenizer)
    path = Path(source)
    if path.exists():
        rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    elif path.suffix in (".jsonl", ".json", ".parquet") or path.is_absolute() or str(source).startswith("."):
        raise DataError(f"{source}: file not found")
    else:
        rows = _hub_rows(str(source), split)
    try:
        data = _parse_rows(rows, None if attributes is None else list(attributes))
    except DataError as exc:
        if str(exc) == "no preference rows found":
            raise DataError(f"{source}: no preference rows found") from exc
        raise
    data.source = str(source)
    return add_computed_attributes(data, computed, tokenizer)
