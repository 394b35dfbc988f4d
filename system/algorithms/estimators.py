"""The advantage estimators by name: the one registry that `algo.name`'s choices, the group-based check and
the critic rule derive from. Pure (no torch), so the config and the driver can read it; the math is in
advantages.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimator:
    name: str
    group_based: bool
    """It compares the samples of one prompt, so it needs `rollout.samples_per_prompt` >= 2."""
    critic: bool = False
    """It needs a value model (the learner builds a critic)."""


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (
    Estimator("grpo", group_based=True),
    Estimator("dr_grpo", group_based=True),
    Estimator("rloo", group_based=True),
    Estimator("reinforce_pp", group_based=False),
    Estimator("reinforce_pp_baseline", group_based=True),
    Estimator("ppo", group_based=False, critic=True),
)}
ALGORITHMS: tuple[str, ...] = tuple(ESTIMATORS)
GROUP_BASED: tuple[str, ...] = tuple(n for n, e in ESTIMATORS.items() if e.group_based)
