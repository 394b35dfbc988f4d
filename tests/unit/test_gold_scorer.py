"""A weight-0 scorer is logged, not optimised; a gold scorer adds the proxy–gold gap to the step's metrics."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError
from test_scorers import rollout

from alignray.config import Config
from alignray.config_sections import RewardConfig, ScorerConfig
from alignray.driver.stats import step_metrics
from alignray.rewards.scorers import build_scorers, score_batch


def nan_reward(prompt: str, response: str) -> float:
    return math.nan


def _metrics(stats: list[dict]) -> dict:
    meta = [{"policy_version": 0, "worker": 0, "new_tokens": 8, "seconds": 1.0}]
    return step_metrics(1, stats, {}, meta, {"generate": 1.0})


def test_weight_zero_scorer_is_logged_not_optimised_and_gold_gap_is_reported():
    responses = ["aaaa", "bb", "ab", "abcdefgh"]
    proxy = ScorerConfig(name="proxy", function="length_target", weight=2.0, kwargs={"target": 4})
    gold = ScorerConfig(name="gold", function="vowel_ratio", weight=0, gold=True)
    logged = ScorerConfig(name="kw", function="contains_keyword", weight=0.0, kwargs={"keyword": "a"})
    only_proxy, _ = score_batch(rollout(responses), build_scorers([proxy]), "fail")
    scored, stats = score_batch(rollout(responses), build_scorers([proxy, gold, logged]), "fail")
    # the optimised total is the proxy's alone; the weight-0 components are columns and metrics
    assert scored.column("reward").to_pylist() == only_proxy.column("reward").to_pylist()
    assert scored.column("reward").to_pylist() == pytest.approx([0.0, -1.0, -1.0, -2.0])
    assert scored.column("reward_gold").to_pylist() == pytest.approx([1.0, 0.0, 0.5, 0.25])
    assert scored.column("reward_kw").to_pylist() == [1.0, 0.0, 1.0, 1.0]
    metrics = _metrics([stats, stats])
    assert metrics["reward/mean"] == pytest.approx(-1.0)
    assert metrics["reward/gold/mean"] == pytest.approx(1.75 / 4)
    assert metrics["reward/kw/mean"] == pytest.approx(0.75)
    assert metrics["reward/proxy_gold_gap/mean"] == pytest.approx(-1.0 - 1.75 / 4)
    # without a gold scorer there is no gap metric
    assert "reward/proxy_gold_gap/mean" not in _metrics([score_batch(rollout(responses),
                                                                     build_scorers([proxy,
                                                                                    logged]), "fail")[1]])


def test_weight_zero_scorer_errors_are_still_reported_not_zeroed():
    scorers = build_scorers([ScorerConfig(name="proxy", function="vowel_ratio"),
                             ScorerConfig(name="gold", function="tests.unit.test_gold_scorer:nan_reward",
                                          weight=0, gold=True)])
    scored, stats = score_batch(rollout(["aa", "bb", "ab", "cd"]), scorers, "quarantine")
    assert scored.num_rows == 0 and len(stats["quarantined"]) == 4
    assert "reward 'gold' returned nan" in stats["quarantined"][0]


def test_gold_scorer_config_rules():
    with pytest.raises(ValidationError, match="its weight must be 0"):
        ScorerConfig(name="gold", function="vowel_ratio", gold=True)
    with pytest.raises(ValidationError, match="at most one scorer may be gold"):
        RewardConfig(scorers=[ScorerConfig(name=n, function="vowel_ratio", weight=0,
                                           gold=True) for n in "ab"])
    cfg = Config.model_validate({"reward": {"scorers": [
        {"name": "rm", "function": "vowel_ratio"}, {"name": "gold", "function": "vowel_ratio", "weight": 0,
                                                     "gold": True}]}})
    assert [s.gold for s in cfg.reward.scorers] == [False, True]
