"""A user's environments for the multi-turn runs (not alignray's): `rollout.env=episode_env:Quiz` with this
folder on PYTHONPATH, or `tests.e2e.episode_env:Chaos` imported by the workers from the repository root."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

INSTRUCTION = "\nNow in vowels: "


class Quiz:
    """Two turns: whatever the policy writes first is answered with an instruction (reward 0); the second
    turn is rewarded by its share of vowels, like the quickstart's reward: a tiny random model learns it."""

    def reset(self, row: dict) -> str:
        self.turn = 0
        return row["prompt"]

    def step(self, text: str) -> tuple[str | None, float, bool]:
        self.turn += 1
        if self.turn == 1:
            return INSTRUCTION, 0.0, False
        return None, sum(ch in "aeiou" for ch in text) / max(len(text), 1), True


class Chaos(Quiz):
    """Quiz that kills its own process (`kill -9`: the rollout worker) in the middle of an episode — after its
    first turn was answered, before its second is rewarded — in the episode a seeded draw picks, at most
    `kills` times in a run (counted by files in `kill_dir`, so a replacement worker goes on)."""

    def __init__(self, kill_dir: str, seed: int = 0, rate: float = 0.05, kills: int = 1):
        self.dir, self.seed, self.rate, self.kills = Path(kill_dir), seed, rate, kills

    def reset(self, row: dict) -> str:
        self.key = f"{self.seed}/{row['prompt_id']}/{row['sample_index']}"
        return super().reset(row)

    def step(self, text: str) -> tuple[str | None, float, bool]:
        done = len(list(self.dir.glob("kill-*")))
        if self.turn == 1 and done < self.kills and random.Random(self.key).random() < self.rate:
            (self.dir / f"kill-{done}").write_text(f"{os.getpid()} {self.key}")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(text)
