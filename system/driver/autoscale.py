"""The autoscaling rule for a worker pool, as a pure function of what the controller measures.

Rule (per pool, evaluated after every step, off unless `min < max`): over the last `window` steps, the share
of the step the driver spent waiting on this pool (rollout: generation; reward: scoring),

    share = Σ wait_s / Σ step_s,

grows the pool by one member when share ≥ `grow_above` and it is below `max`, and shrinks it by one when share
≤ `shrink_below` and it is above `min`. After a change the window starts over (`cooldown`: the next decision
needs `window` fresh steps), so one slow step cannot swing the pool twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignray.config_sections import AutoscaleConfig


def wait_share(wait_s: Sequence[float], step_s: Sequence[float]) -> float:
    """Σ wait / Σ step over the window (0 when nothing was timed)."""
    total = sum(step_s)
    return sum(wait_s) / total if total > 0 else 0.0


def decide(target: int, wait_s: Sequence[float], step_s: Sequence[float], cfg: AutoscaleConfig) -> int:
    """The pool's new target size (unchanged until `window` steps have been measured)."""
    if not cfg.enabled or len(step_s) < cfg.window:
        return target
    share = wait_share(wait_s[-cfg.window:], step_s[-cfg.window:])
    if share >= cfg.grow_above and target < cfg.max:
        return target + 1
    if share <= cfg.shrink_below and target > cfg.min:
        return target - 1
    return max(cfg.min, min(cfg.max, target))
