"""The autoscaling rule against hand-computed wait shares."""

from __future__ import annotations

import pytest

from alignray.config_sections import AutoscaleConfig
from alignray.driver.autoscale import decide, wait_share
from alignray.errors import ConfigError

ON = AutoscaleConfig(min=1, max=3, grow_above=0.5, shrink_below=0.1, window=3)


def test_wait_share_is_total_wait_over_total_step_time():
    # (0.6 + 0.3 + 0.9) / (1 + 1 + 2) = 1.8 / 4 = 0.45
    assert wait_share([0.6, 0.3, 0.9], [1, 1, 2]) == pytest.approx(0.45)
    assert wait_share([], []) == 0.0


def test_grows_when_the_learner_waits_on_generation_and_stops_at_max():
    waits, steps = [0.6, 0.5, 0.7], [1.0, 1.0, 1.0]  # share 0.6 ≥ 0.5
    assert decide(1, waits, steps, ON) == 2
    assert decide(3, waits, steps, ON) == 3


def test_shrinks_when_idle_and_stops_at_min():
    waits, steps = [0.05, 0.0, 0.1], [1.0, 1.0, 1.0]  # share 0.05 ≤ 0.1
    assert decide(3, waits, steps, ON) == 2
    assert decide(1, waits, steps, ON) == 1


def test_holds_in_between_before_a_full_window_and_when_off():
    assert decide(2, [0.3, 0.3, 0.3], [1, 1, 1], ON) == 2  # share 0.3: neither rule
    assert decide(1, [0.9, 0.9], [1, 1], ON) == 1  # 2 of 3 steps measured
    assert decide(1, [0.9, 0.9, 0.9], [1, 1, 1], AutoscaleConfig()) == 1  # min == max: off


def test_bad_bounds_fail_naming_the_fields():
    from alignray.config import load_config

    with pytest.raises(ConfigError, match="autoscale.max"):
        load_config(None, ["rollout.autoscale={min: 3, max: 2}"])
    with pytest.raises(ConfigError, match="shrink_below"):
        load_config(None, ["reward.autoscale={min: 1, max: 2, grow_above: 0.2, shrink_below: 0.3}"])
