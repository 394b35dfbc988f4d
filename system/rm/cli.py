"""Plain entry points behind `alignray rm eval` and `alignray rm bench` (the argparse wiring lives in
alignray.cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from alignray.errors import ConfigError, DataError


def rm_eval_main(model: str, data: str, out: str | None = None, batch_size: int = 32,
                 trust_remote_code: bool = False, baseline: str | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Load a saved reward model and a preference file, print the diagnostics table, write JSON to `out`.
    The models run on `device` (`--device`: auto = the GPU when CUDA is available, else the CPU).

    Attributes in the data (chosen_<a>/rejected_<a>) are auto-detected; length_tokens (with the model's
    tokenizer) and length_chars are always added, since length is the most common spurious attribute.
    `baseline` (a BT model directory): also evaluate it and flag every attribute value where the model's bias
    gap has the opposite sign and a larger size than the baseline's (over-correction by the invariance
    penalty)."""
    for flag, path in (("--model", model), ("--baseline", baseline)):
        if path is not None:
            check_model_dir(flag, path)
    if not str(data).startswith("builtin:") and Path(data).suffix in (".jsonl", ".json", ".parquet") \
            and not Path(data).exists():
        raise DataError(f"--data {data}: file not found")
    import torch

    from alignray.devices import resolve_device
    from alignray.rewards.loading import load_reward_model
    from alignray.rm.evaluate import evaluate_reward_model, format_table, over_correction
    from alignray.rm.preference_data import load_preferences

    device = resolve_device(device, torch.cuda.is_available())
    reward_model = load_reward_model(model, trust_remote_code=trust_remote_code, device=device)
    preferences = load_preferences(data, computed=["length_tokens", "length_chars"],
                                   tokenizer=reward_model.tokenizer)
    results = evaluate_reward_model(reward_model, preferences, batch_size)
    results.update(model=str(model), data=str(data))
    if baseline:
        base = evaluate_reward_model(load_reward_model(baseline, trust_remote_code=trust_remote_code,
                                                       device=device), preferences, batch_size)
        results["baseline"] = {"model": str(baseline), "accuracy": base["accuracy"],
                               "bias_gap": base["bias_gap"], "counterfactual": base["counterfactual"]}
        results["over_correction"] = over_correction(results["bias_gap"], base["bias_gap"])
    print(format_table(results))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
    return results


def check_model_dir(flag: str, path: str) -> None:
    """A saved reward model is a folder with alignray_rm.json (any kind) or an HF config.json (a plain
    sequence-classification model); anything else is one clean error, before any model loads."""
    from alignray.rewards.models import RM_CONFIG_FILE

    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: no such folder (a reward model saved by `alignray rm train`, "
                          "or an HF sequence-classification model)")
    if not (folder / RM_CONFIG_FILE).is_file() and not (folder / "config.json").is_file():
        raise ConfigError(f"{flag} {path}: not a reward model folder (no {RM_CONFIG_FILE} and no "
                          "config.json)")


BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
"""The checkout's benchmark scripts: the reward-model benchmarks are its package `rm_bench`, not part of
alignray."""


def rm_bench_main(name: str, out: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Run one reward-model benchmark by name (see benchmarks/rm_bench/__init__.py), from a source
    checkout."""
    if not (BENCHMARKS_DIR / "rm_bench" / "__init__.py").exists():
        raise ConfigError("alignray rm bench runs the benchmarks of a source checkout "
                          f"({BENCHMARKS_DIR}/rm_bench is missing): clone the repository and install it "
                          "with deploy/install.sh")
    if str(BENCHMARKS_DIR) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS_DIR))
    from rm_bench import BENCHMARKS

    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}: choose one of {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name](out=out, quick=quick)
