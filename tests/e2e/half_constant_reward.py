"""A user reward for the dynamic-sampling runs (`function: tests.e2e.half_constant_reward:score`, imported by
the reward workers from the repository root): constant on about half the prompts, so their groups carry no
signal."""

from __future__ import annotations

import zlib


def score(prompt: str, response: str) -> float:
    """0.0 when the prompt's CRC-32 is even (52 of the 100 built-in prompts); else a number in [0, 1) that
    varies with the response (two different answers almost never tie)."""
    if zlib.crc32(prompt.encode()) % 2 == 0:
        return 0.0
    return zlib.crc32(response.encode()) / 2**32
