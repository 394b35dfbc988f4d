"""Reward-model benchmarks with known ground truth: `alignray rm bench NAME --out results.json`.

Each entry is `run(out: str | None = None, quick: bool = False) -> dict`, printing a table and writing
JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _lazy(module: str, function: str = "run") -> Callable[..., dict[str, Any]]:
    def run(out: str | None = None, quick: bool = False) -> dict[str, Any]:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{module}"), function)(out=out, quick=quick)

    run.__name__ = f"run_{module}"
    return run


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "length-bias": _lazy("length_bias"),
    "noisy-raters": _lazy("noisy_raters"),
    "overoptimisation": _lazy("overoptimisation"),
    "sycophancy": _lazy("sycophancy"),
    "haf-small-data": _lazy("haf_small_data"),
    "haf-text": _lazy("haf_text"),  # real text (MiniLM fine-tuned): few pairs, unseen templates at test time
    # real text: seeded sentence grammars scored with the pretrained MiniLM encoder (cached features + heads)
    "concept-text": _lazy("concept_text"),
    "sycophancy-text": _lazy("concept_text", "run_sycophancy"),
}
