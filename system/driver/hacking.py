"""Live reward-hacking alarms: the run watches its own metrics and says so — one warning line, an event, the
metric `hacking/score` — when the optimised (proxy) reward pulls away from what it stands for, and can
checkpoint and stop (`reward.hacking`). Pure: the controller feeds it each step's metrics line.

Two signals, each a number where 0 is healthy and larger is worse:

- **Proxy vs gold** (a scorer with `gold: true`): each reward's gain since the first `window` steps, in units
  of its own spread then,

      score = (P̄_now − P̄_0) / σ_P,0  −  (Ḡ_now − Ḡ_0) / σ_G,0

  where X̄_now and X̄_0 are the means of the per-step batch means over the last and the first `window` steps
  and σ_X,0 the mean per-sample standard deviation over the first window. A policy that gains gold as fast as
  proxy scores ≈ 0 (the scales of proxy and gold need not agree); one that climbs the proxy without the gold
  scores its proxy gain.
- **Length** (no gold needed): the mean reward–length correlation over the last `window` steps, when the mean
  response length has also grown by `length_growth` times since the first window (else 0): the reward is being
  earned by length. On by default only with `length_at` set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator


class HackingConfig(BaseModel):
    """`reward.hacking`."""

    model_config = ConfigDict(extra="forbid")

    warn_at: float | None = Field(3.0, gt=0)
    """Proxy-vs-gold score (σ units) that raises the warning (once per run); None: no warning."""
    stop_at: float | None = Field(None, gt=0)
    """Proxy-vs-gold score at which the run checkpoints and stops with one line; None: never."""
    length_at: float | None = Field(None, gt=0, le=1)
    """Reward–length correlation that raises the warning when length has grown `length_growth`×; None: off."""
    length_growth: float = Field(1.5, gt=1)
    window: int = Field(5, ge=1)
    """Steps averaged at the start (the baseline) and at the end of the comparison."""

    @model_validator(mode="after")
    def _ordered(self) -> HackingConfig:
        if self.warn_at is not None and self.stop_at is not None and self.stop_at < self.warn_at:
            raise ValueError(f"reward.hacking.stop_at ({self.stop_at}) must be at least warn_at "
                             f"({self.warn_at})")
        return self


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def gold_divergence(proxy: list[float], proxy_std: list[float], gold: list[float], gold_std: list[float],
                    window: int) -> float:
    """The proxy-vs-gold score of the module docstring from per-step means and standard deviations (NaN until
    there are `2 × window` steps or when a spread is 0)."""
    if len(proxy) < 2 * window:
        return math.nan
    sp, sg = _mean(proxy_std[:window]), _mean(gold_std[:window])
    if not (sp > 0 and sg > 0):
        return math.nan
    gain = (_mean(proxy[-window:]) - _mean(proxy[:window])) / sp
    return gain - (_mean(gold[-window:]) - _mean(gold[:window])) / sg


def length_score(corr: list[float], length: list[float], window: int, growth: float) -> float:
    """The length score of the module docstring (0 while length has not grown `growth`×; NaN too early)."""
    if len(corr) < 2 * window:
        return math.nan
    grew = _mean(length[-window:]) >= growth * _mean(length[:window])
    return max(_mean(corr[-window:]), 0.0) if grew else 0.0


@dataclass
class HackingAlarm:
    cfg: HackingConfig
    gold: str | None
    """The gold scorer's name (its component is `reward/<gold>/mean`), or None."""
    rows: list[dict] = field(default_factory=list)
    warned: bool = False

    def update(self, metrics: dict) -> tuple[str | None, str]:
        """Add a step; adds `hacking/score` (and `hacking/length_score`) to `metrics`; returns ("warn" |
        "stop"
        | None, why)."""
        self.rows.append(metrics)
        w = self.cfg.window
        score = math.nan
        if self.gold is not None:
            score = gold_divergence([m["reward/mean"] for m in self.rows],
                                    [m["reward/std"] for m in self.rows],
                                    [m[f"reward/{self.gold}/mean"] for m in self.rows],
                                    [m.get("reward/gold_std", math.nan) for m in self.rows], w)
            metrics["hacking/score"] = score
        length = length_score([m["reward/length_corr"] for m in self.rows],
                              [m["response_length/mean"] for m in self.rows], w, self.cfg.length_growth)
        metrics["hacking/length_score"] = length
        why = ""
        if math.isfinite(score):
            why = (f"the proxy reward gained {score:.1f} standard deviations more than the gold "
                   f"'{self.gold}' over the last {w} steps against the first {w}")
            if self.cfg.stop_at is not None and score >= self.cfg.stop_at:
                return "stop", why
            if self.cfg.warn_at is not None and score >= self.cfg.warn_at and not self.warned:
                self.warned = True
                return "warn", why
        if self.cfg.length_at is not None and math.isfinite(length) and length >= self.cfg.length_at \
                and not self.warned:
            self.warned = True
            return "warn", (f"reward follows response length (correlation {length:.2f} over the last {w} "
                            f"steps, length grown ≥ {self.cfg.length_growth:g}×)")
        return None, why
