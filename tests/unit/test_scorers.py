"""Rewards: components and weighted total as columns; a reward that raises or is NaN is reported by sample
id."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from alignray.config_sections import ScorerConfig
from alignray.errors import RewardError
from alignray.rewards.functions import length_target, resolve_reward_fn, vowel_ratio
from alignray.rewards.scorers import build_scorers, score_batch
from alignray.rollout.engine import Completion, build_rollout_batch
from alignray.schema import list_array


def flaky(prompt: str, response: str) -> float:
    """Test reward: raises on 'boom', NaN on 'nan', else 1."""
    if response == "boom":
        raise ValueError("cannot score")
    return math.nan if response == "nan" else 1.0


def rollout(responses: list[str]) -> pa.RecordBatch:
    prompts = pa.record_batch({"prompt_id": pa.array([11, 12], pa.int64()), "prompt": ["p", "q"],
                               "prompt_tokens": list_array([[3], [4]], pa.int32())})
    comps = [[Completion(np.array([5, 6], np.int32), np.zeros(2, np.float32), "length") for _ in range(2)]
             for _ in range(2)]
    batch = build_rollout_batch(prompts, comps, 0, lambda t: "")
    return batch.set_column(batch.schema.get_field_index("response"), "response", pa.array(responses))


def test_builtin_functions_hand_computed():
    assert vowel_ratio("", "abcde") == pytest.approx(2 / 5)
    assert vowel_ratio("", "") == 0.0
    assert length_target("", "x" * 12, target=24) == pytest.approx(-0.5)
    assert resolve_reward_fn("tests.unit.test_scorers:flaky").__name__ == "flaky"
    with pytest.raises(ValueError, match="unknown reward function 'nope'"):
        resolve_reward_fn("nope")


def test_components_and_weighted_total():
    scorers = build_scorers([ScorerConfig(name="vowels", function="vowel_ratio", weight=2.0),
                             ScorerConfig(name="length", function="length_target", weight=0.5,
                                          kwargs={"target": 4})])
    scored, stats = score_batch(rollout(["aaaa", "bb", "ab", "abcdefgh"]), scorers, "fail")
    assert scored.column("reward_vowels").to_pylist() == pytest.approx([1.0, 0.0, 0.5, 0.25])
    assert scored.column("reward_length").to_pylist() == pytest.approx([0.0, -0.5, -0.5, -1.0])
    assert scored.column("reward").to_pylist() == pytest.approx([2.0, -0.25, 0.75, 0.0])
    assert stats["count"] == 4 and stats["reward/vowels/sum"] == pytest.approx(1.75)


def test_raising_or_nan_reward_fails_naming_the_sample():
    scorers = build_scorers([ScorerConfig(name="flaky", function="tests.unit.test_scorers:flaky")])
    with pytest.raises(RewardError) as err:
        score_batch(rollout(["ok", "boom", "nan", "ok"]), scorers, "fail")
    msg = str(err.value)
    assert "prompt_id=11 sample_index=1: reward 'flaky' raised ValueError: cannot score" in msg
    assert "prompt_id=12 sample_index=0: reward 'flaky' returned nan" in msg


def test_quarantine_drops_only_the_bad_samples():
    scorers = build_scorers([ScorerConfig(name="flaky", function="tests.unit.test_scorers:flaky")])
    scored, stats = score_batch(rollout(["ok", "boom", "nan", "ok"]), scorers, "quarantine")
    assert scored.num_rows == 2 and scored.column("reward").to_pylist() == [1.0, 1.0]
    assert len(stats["quarantined"]) == 2 and "prompt_id=11 sample_index=1" in stats["quarantined"][0]
