"""Built-in rule rewards: `fn(prompt, response, **kwargs) -> float`. Users add their own as
`package.module:function`."""

from __future__ import annotations

import importlib
from collections.abc import Callable

RewardFn = Callable[..., float]


def vowel_ratio(prompt: str, response: str, vowels: str = "aeiou") -> float:
    """Share of the response's characters that are lowercase vowels (0 for an empty response)."""
    if not response:
        return 0.0
    return sum(ch in vowels for ch in response) / len(response)


def length_target(prompt: str, response: str, target: int = 24) -> float:
    """−|len(response) − target| / target, in characters: 0 at the target length, −1 at twice it or at
    empty."""
    return -abs(len(response) - target) / target


def contains_keyword(prompt: str, response: str, keyword: str = "yes") -> float:
    """1 if the keyword occurs in the response (case-insensitive), else 0."""
    return float(keyword.lower() in response.lower())


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "vowel_ratio": vowel_ratio,
    "length_target": length_target,
    "contains_keyword": contains_keyword,
}


def resolve_reward_fn(spec: str) -> RewardFn:
    """A built-in name, or `package.module:function` importable on the worker (ship it with --working-dir)."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise ValueError(f"unknown reward function '{spec}'; built-ins: {', '.join(BUILTIN_REWARDS)}, "
                         "or give 'package.module:function'")
    module_name, fn_name = spec.split(":", 1)
    fn = getattr(importlib.import_module(module_name), fn_name, None)
    if not callable(fn):
        raise ValueError(f"reward function '{spec}': {module_name} has no callable '{fn_name}'")
    return fn
