"""The reward-model service without Ray: its config checks, its capacity demand, and the batching rule
(alignray.rewards.batcher) with a fake model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from alignray.config import load_config
from alignray.driver.capacity import demands_of, infeasible
from alignray.errors import ConfigError
from alignray.rewards.batcher import Batcher

MODEL = "reward.scorers=[{name: rm, type: model, path: /nowhere}, {name: vowels, function: vowel_ratio}]"


def test_the_service_needs_a_model_scorer_and_no_colocation():
    with pytest.raises(ConfigError, match=r"reward\.service\.enabled is true but reward\.scorers has no "
                                          r"scorer of type 'model'"):
        load_config(None, ["reward.service.enabled=true"])
    with pytest.raises(ConfigError, match=r"train\.colocate needs reward\.service\.enabled false"):
        load_config(None, [MODEL, "reward.service.enabled=true", "train.colocate=true"])
    with pytest.raises(ConfigError, match=r"reward\.service\.num_servers"):
        load_config(None, [MODEL, "reward.service.enabled=true", "reward.service.num_servers=0"])
    with pytest.raises(ConfigError, match=r"reward\.service\.batch_size: unknown field"):
        load_config(None, [MODEL, "reward.service.batch_size=8"])
    cfg = load_config(None, [MODEL, "reward.service.enabled=true", "reward.service.max_batch_size=16"])
    assert cfg.reward.service.max_batch_size == 16 and cfg.reward.service.batch_wait_ms == 5.0
    assert not load_config(None, [MODEL]).reward.service.enabled  # off by default


def test_the_servers_count_in_the_run_capacity():
    cfg = load_config(None, [MODEL, "reward.service.enabled=true", "reward.service.num_servers=2",
                             "reward.service.num_gpus=1"])
    assert [(d.role, d.count, d.gpus) for d in demands_of(cfg)][-1] == ("rm_server", 2, 1.0)
    problem = infeasible(demands_of(cfg), [{"CPU": 16.0, "GPU": 0.0}])
    assert problem.startswith("reward.service.num_gpus=1: rm_server needs 1 GPU per actor")
    problem = infeasible(demands_of(cfg), [{"CPU": 16.0, "GPU": 1.0}])
    assert "rm_server 2 × 1" in problem and "reward.service.num_servers (2)" in problem
    off = load_config(None, [MODEL])
    assert "rm_server" not in {d.role for d in demands_of(off)}


class FakeModel:
    """reward = len(prompt) + len(response)/100, std = 1; records every forward's size."""

    def __init__(self, fail_on: str | None = None):
        self.sizes: list[int] = []
        self.fail_on = fail_on

    def __call__(self, scorer: str, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        if scorer == self.fail_on:
            raise RuntimeError("model exploded")
        self.sizes.append(len(prompts))
        reward = np.array([len(p) + len(r) / 100 for p, r in zip(prompts, responses, strict=True)])
        return {"reward": reward, "std": np.ones(len(prompts))}


def expected(prompts: list[str], responses: list[str]) -> np.ndarray:
    return np.array([len(p) + len(r) / 100 for p, r in zip(prompts, responses, strict=True)], np.float32)


def test_concurrent_callers_share_forwards_and_get_their_own_rows_back():
    model = FakeModel()

    async def main():
        batcher = Batcher(model, max_batch_size=8, wait_s=0.05)
        calls = [(["p" * (i + 1)] * 3, [f"r{i}{j}" for j in range(3)]) for i in range(6)]
        results = await asyncio.gather(*(batcher.submit("rm", p, r) for p, r in calls))
        batcher.close()
        return batcher, calls, results

    batcher, calls, results = asyncio.run(main())
    for (prompts, responses), out in zip(calls, results, strict=True):
        np.testing.assert_allclose(out["reward"], expected(prompts, responses))
        assert out["std"].tolist() == [1.0, 1.0, 1.0]
    stats = batcher.stats.as_dict()
    assert stats["requests"] == 6 and stats["samples"] == 18
    assert max(model.sizes) <= 8 and sum(model.sizes) == 18  # no forward over max_batch_size
    assert stats["forwards"] == len(model.sizes) < 6 and stats["mean_batch_size"] > 3


def test_scorers_are_forwarded_apart_and_a_model_error_reaches_only_its_callers():
    model = FakeModel(fail_on="broken")

    async def main():
        batcher = Batcher(model, max_batch_size=64, wait_s=0.05)
        return await asyncio.gather(batcher.submit("a", ["x"], ["y"]), batcher.submit("broken", ["x"], ["y"]),
                                    batcher.submit("b", ["xx", "z"], ["y", ""]), return_exceptions=True)

    a, broken, b = asyncio.run(main())
    assert isinstance(broken, RuntimeError) and "exploded" in str(broken)
    np.testing.assert_allclose(a["reward"], [1.01])
    np.testing.assert_allclose(b["reward"], [2.01, 1.0])
    assert sorted(model.sizes) == [1, 2]  # one forward per scorer, never mixed


def test_a_large_request_is_split_into_forwards_and_a_bad_one_fails_at_once():
    model = FakeModel()

    async def main():
        batcher = Batcher(model, max_batch_size=4, wait_s=0.0)
        first = await batcher.submit("rm", ["a"] * 10, ["b"] * 10)  # larger than a batch: split in forwards
        with pytest.raises(ValueError, match="2 prompts but 1 responses"):
            await batcher.submit("rm", ["a", "b"], ["c"])
        return first

    out = asyncio.run(main())
    assert len(out["reward"]) == 10 and model.sizes == [4, 4, 2]
