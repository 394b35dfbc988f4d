"""The episode fields of the `rollout` section (`rollout.env`, `rollout.max_turns`, ...), kept here so that
`alignray.config` stays small: `RolloutConfig` inherits them. No alignray imports (config imports this)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUILTIN_ENVS = {"calc": "alignray.envs.calc:CalculatorEnv"}
"""Built-in environments by name (`rollout.env: calc`)."""
ENV_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ENV_COMPONENT = "env"
"""The episode reward's component name: the column `reward_env`, the metric `reward/env/mean`."""


class EpisodeFields(BaseModel):
    """Multi-turn episodes: set `env` and every sample is an episode of up to `max_turns` policy turns. A
    mixin of `alignray.config_sections.RolloutConfig` (its properties read `max_new_tokens` there)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    env: str | None = None
    """The environment class, `package.module:Class` (importable on the workers, like reward functions) or a
    built-in name (`calc`); empty: one-turn rollouts (no episode columns)."""
    env_kwargs: dict[str, Any] = {}
    """Keyword arguments of the environment's constructor (one instance per episode)."""
    max_turns: int = Field(1, ge=1)
    """Policy turns per episode, each of at most `max_new_tokens`; more than 1 needs `env`."""
    max_episode_tokens: int | None = Field(None, gt=0)
    """Token budget of an episode after its prompt, policy and observation tokens together (empty:
    2 × `max_turns × max_new_tokens`, as much room for observations as for the policy's turns); an episode
    that reaches it, or whose next observation would not fit, ends (`finish_reason: length`)."""
    env_weight: float = 1.0
    """Weight of the episode reward (`reward_env`, the sum of its turns' rewards) in the optimised `reward`;
    0 = logged only. `reward.scorers` add to it, or may be empty."""
    env_timeout_s: float = Field(30.0, gt=0)
    """Seconds one `reset` or `step` call may take (a batch's async calls together); past it the episode
    fails with the environment's stack, by `reward.on_error`."""

    @model_validator(mode="after")
    def _episodes(self) -> EpisodeFields:
        if self.env is not None and self.env not in BUILTIN_ENVS and not ENV_SPEC.match(self.env):
            raise ValueError(f"rollout.env: give 'package.module:Class' or a built-in "
                             f"({', '.join(BUILTIN_ENVS)}), got {self.env!r}")
        if self.env is None and self.max_turns > 1:
            raise ValueError(f"rollout.max_turns={self.max_turns} needs an environment (rollout.env) to "
                             "answer between the turns")
        return self

    @property
    def episode_tokens(self) -> int:
        """Tokens after the prompt an episode may hold (one-turn rollouts: `max_new_tokens`)."""
        if not self.env:
            return self.max_new_tokens
        return self.max_episode_tokens or 2 * self.max_turns * self.max_new_tokens

    @property
    def policy_tokens(self) -> int:
        """The most tokens the policy can write in one sample: the constant normaliser of
        `seq_mean_token_sum_norm` (one-turn rollouts: `max_new_tokens`)."""
        return min(self.episode_tokens, self.max_turns * self.max_new_tokens)

    @property
    def env_reward_weight(self) -> float | None:
        """`env_weight` when episodes run, else None (no `reward_env` component)."""
        return self.env_weight if self.env else None
