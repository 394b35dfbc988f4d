"""Shared fixtures: one local Ray cluster per test session (real actors, loopback only), tiny configs."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # results of killed actors are abandoned on purpose


WORKER_ENV = {"env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}}


def start_local_ray():
    """The suite's one-node cluster: 8 logical CPUs (the roles oversubscribe 2 real cores), loopback only."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env=WORKER_ENV, logging_level="WARNING")
    return ray


@pytest.fixture(scope="session")
def ray_cluster():
    ray = start_local_ray()
    yield ray
    ray.shutdown()


def tiny_overrides(**extra: object) -> list[str]:
    """A quickstart that finishes in seconds: few prompts, short responses, progress bar off."""
    base = {"train.steps": 3, "train.prompts_per_step": 4, "rollout.max_new_tokens": 8,
            "train.progress": False, "rollout.samples_per_prompt": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def t(x, dtype=None) -> torch.Tensor:
    """A float32 tensor (or `dtype`) from nested lists: the hand-computed inputs of the algorithm tests."""
    return torch.tensor(x, dtype=dtype or torch.float32)


def ids(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


def close(actual, expected, atol: float = 1e-5) -> None:
    """`actual` equals the hand-computed `expected` within `atol` (no relative tolerance)."""
    torch.testing.assert_close(actual, t(expected).to(actual.dtype), atol=atol, rtol=0)


def records_of(data) -> list[dict]:
    """PreferenceData as JSONL rows (prompt, chosen, rejected, chosen_<a>/rejected_<a>, ratings,
    counterfactual)."""
    records = []
    for i in range(len(data)):
        row = {"prompt": data.prompts[i], "chosen": data.chosen[i], "rejected": data.rejected[i]}
        for name, values in data.attributes.items():
            row[f"chosen_{name}"], row[f"rejected_{name}"] = values[i, 0].item(), values[i, 1].item()
        if data.ratings:
            row["chosen_ratings"] = {r: float(v[i, 0]) for r, v in data.ratings.items()}
            row["rejected_ratings"] = {r: float(v[i, 1]) for r, v in data.ratings.items()}
        cf = {a: v[i] for a, v in data.counterfactuals.items() if v[i] is not None}
        if cf:
            row["counterfactual"] = cf
        records.append(row)
    return records


def write_jsonl(path, records) -> None:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
