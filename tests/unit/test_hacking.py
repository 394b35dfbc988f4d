"""The reward-hacking alarm's rules against hand-computed numbers, and when it warns or stops."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from alignray.driver.hacking import HackingAlarm, HackingConfig, gold_divergence, length_score


def test_gold_divergence_by_hand():
    # window 2: proxy 0,0 → 2,4 (gain 3, spread 1.0 → 3σ); gold 0,0 → 0.1,0.3 (gain 0.2, spread 0.2 → 1σ)
    proxy, proxy_std = [0.0, 0.0, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0]
    gold, gold_std = [0.0, 0.0, 0.1, 0.3], [0.2, 0.2, 0.5, 0.5]
    assert gold_divergence(proxy, proxy_std, gold, gold_std, window=2) == pytest.approx(3.0 - 1.0)
    # a policy that gains gold as fast as proxy, in its own units: 0 whatever the scales
    assert gold_divergence(proxy, proxy_std, [0.0, 0.0, 0.2, 0.4], [0.1] * 4, 2) == pytest.approx(0.0)
    assert math.isnan(gold_divergence(proxy[:3], proxy_std[:3], gold[:3], gold_std[:3], 2))  # too early
    assert math.isnan(gold_divergence(proxy, [0.0] * 4, gold, gold_std, 2))  # no spread: no unit


def test_length_score_needs_growth():
    corr, length = [0.1, 0.2, 0.7, 0.9], [10.0, 10.0, 14.0, 16.0]
    assert length_score(corr, length, 2, growth=1.5) == pytest.approx(0.8)  # 15 ≥ 1.5 × 10
    assert length_score(corr, length, 2, growth=2.0) == 0.0  # 15 < 20
    assert length_score([0.1, 0.2, -0.5, -0.3], length, 2, 1.5) == 0.0  # negative correlation is no signal


def step(proxy: float, gold: float, corr: float = 0.0, length: float = 10.0) -> dict:
    return {"reward/mean": proxy, "reward/std": 1.0, "reward/judge/mean": gold, "reward/gold_std": 0.1,
            "reward/length_corr": corr, "response_length/mean": length}


def test_the_alarm_warns_once_then_stops():
    alarm = HackingAlarm(HackingConfig(warn_at=2.0, stop_at=5.0, window=2), gold="judge")
    verdicts = []
    for proxy, gold in [(0, 0), (0, 0), (1, 0.1), (3, 0.1), (5, 0.1), (7, 0.1), (9, 0.1)]:
        metrics = step(proxy, gold)
        verdicts.append(alarm.update(metrics)[0])
    # step 4: gain (2 − 0)/1 − (0.1 − 0)/0.1 = 1 → quiet; step 5: 4 − 1 = 3 → warn; step 6: 6 − 1 = 5 → stop
    assert verdicts == [None, None, None, None, "warn", "stop", "stop"]
    assert metrics["hacking/score"] == pytest.approx(8.0 - 1.0)


def test_no_gold_no_score_and_the_length_rule_is_opt_in():
    quiet = HackingAlarm(HackingConfig(window=2), gold=None)
    rows = [step(0, 0, 0.0, 10), step(0, 0, 0.0, 10), step(1, 0, 0.9, 20), step(2, 0, 0.9, 30)]
    assert [quiet.update(dict(r))[0] for r in rows] == [None] * 4
    alarm = HackingAlarm(HackingConfig(window=2, length_at=0.8), gold=None)
    verdicts = [alarm.update(dict(r)) for r in rows]
    assert [v for v, _ in verdicts] == [None, None, None, "warn"]
    assert "reward follows response length (correlation 0.90" in verdicts[-1][1]


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="stop_at .* must be at least warn_at"):
        HackingConfig(warn_at=3.0, stop_at=1.0)
    from alignray.config import load_config

    assert load_config(None, ["reward.hacking.stop_at=6"]).reward.hacking.stop_at == 6.0
