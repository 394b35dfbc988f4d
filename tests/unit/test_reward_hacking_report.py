"""The reward-hacking lab's report over seeds (benchmarks/reward_hacking_report.py) on hand-made curves."""

from __future__ import annotations

import math

import pytest
from reward_hacking_report import seed_rows, summarise, table


def run(gold: list[float], proxy: list[float] | None, alarm_at: int | None = None) -> list[dict]:
    """Metrics lines of a run: step i has gold[i], proxy[i] (None: a run without a proxy), length 10 + i."""
    return [{"step": i + 1, "reward/gold/mean": g, "response_length/mean": 10.0 + i, "kl": 0.1 * i,
             **({} if proxy is None else {"reward/proxy/mean": proxy[i], "reward/std": 1.0,
                                          "reward/proxy_gold_gap/mean": proxy[i] - g}),
             "alarm": alarm_at is not None and i + 1 >= alarm_at} for i, g in enumerate(gold)]


def test_rows_means_and_standard_errors_by_hand():
    curves = {0: {"bt": run([0.0, 0.1, 0.3, 0.5], [0.0, 1.0, 2.0, 4.0], alarm_at=3),
                  "gold": run([0.0, 0.2, 0.4, 0.6], None)},
              1: {"bt": run([0.0, 0.1, 0.1, 0.3], [0.0, 1.0, 1.0, 2.0]),
                  "gold": run([0.0, 0.2, 0.4, 0.8], None)}}
    rows = seed_rows(curves, window=2)
    bt0 = next(r for r in rows if r["rm"] == "bt" and r["seed"] == 0)
    assert bt0["gold_first"] == pytest.approx(0.05) and bt0["gold_last"] == pytest.approx(0.4)
    assert bt0["gold_gain"] == pytest.approx(0.35) and bt0["proxy_last"] == pytest.approx(3.0)
    assert bt0["proxy_gold_gap_last"] == pytest.approx(2.6) and bt0["kl_last"] == pytest.approx(0.25)
    assert bt0["length_first"] == 10.5 and bt0["length_last"] == 12.5 and bt0["alarm_step"] == 3
    gold1 = next(r for r in rows if r["rm"] == "gold" and r["seed"] == 1)
    assert gold1["proxy_last"] is None and gold1["alarm_step"] is None
    summary = summarise(rows)
    # bt gold gains 0.35 and 0.15: mean 0.25, SE = std(ddof 1) / √2 = 0.1414 / 1.414 = 0.1
    assert summary["bt"]["gold_gain"]["mean"] == pytest.approx(0.25)
    assert summary["bt"]["gold_gain"]["se"] == pytest.approx(0.1)
    assert summary["bt"]["alarms"] == 1 and summary["gold"]["alarms"] == 0
    assert "proxy_last" not in summary["gold"]
    text = table(rows, window=2)
    assert "| GRPO vs BT RM | 0.050 ± 0.000 → 0.300 ± 0.100 | 0.250 ± 0.100 |" in text
    assert "1/2 runs" in text and "0/2 runs" in text and not math.isnan(summary["gold"]["kl_last"]["mean"])
