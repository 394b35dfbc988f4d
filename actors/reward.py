"""RewardWorker: hosts the configured scorers; rollout batch in, scored batch (plus small stats) out.

Its module imports no torch: a worker with reward functions only never loads it (the driver imports this
module too).
"""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import ray

from alignray.actors.watch import WATCHED, Watched
from alignray.config import Config
from alignray.config_sections import RewardConfig
from alignray.devices import actor_device
from alignray.errors import RewardError


def build_reward_scorers(rc: RewardConfig, trust_remote_code: bool, own_process: bool = True,
                         device: str = "cpu", env_weight: float | None = None) -> list:
    """The scorers of `reward.scorers` in this process (reward models load here, on `device`), and with
    `env_weight` (episodes: `rollout.env_weight`) the environment's reward `reward_env`. In a process of its
    own, torch (where they use it) runs `reward.torch_threads` threads; a learner rank that scores
    (train.colocate) keeps its own."""
    from alignray.rewards.scorers import EnvironmentScorer, build_scorers

    try:
        scorers = build_scorers(rc.scorers, trust_remote_code, device)
    except Exception as e:  # noqa: BLE001 - e.g. a reward module only the workers have, failing to import
        raise RewardError(f"reward.scorers: cannot build the scorers on this worker: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    # a reward model, or a reward function's module, uses torch: its thread budget
    if own_process and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(rc.torch_threads)
    return scorers + ([EnvironmentScorer(env_weight)] if env_weight is not None else [])


@ray.remote(**WATCHED)
class RewardWorker(Watched):
    def __init__(self, cfg_dict: dict):
        self.cfg = Config.model_validate(cfg_dict)
        self.scorers: list | None = None  # built by the start call, where the watchdog sees it
        self._device = "cpu"

    def _build(self) -> None:
        if self.scorers is None:
            self.begin_stages()
            self._device = actor_device(self.cfg.reward.num_gpus, "reward.num_gpus")
            self.scorers = build_reward_scorers(self.cfg.reward, self.cfg.model.trust_remote_code,
                                                device=self._device,
                                                env_weight=self.cfg.rollout.env_reward_weight)
            self.stage(f"scorers built on {self._device} ({', '.join(s.name for s in self.scorers)})")

    def ready(self) -> bool:
        self._build()
        return True

    def device(self) -> str:
        """Where this worker's reward models run: "cpu", or "cuda:0" (the GPU `reward.num_gpus` reserved)."""
        self._build()
        return self._device

    def pid(self) -> int:
        """This worker's process id (chaos tests kill -9 it; `alignray status` shows it)."""
        return os.getpid()

    @ray.method(num_returns=2)
    def score(self, rollout: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
        from alignray.rewards.scorers import score_batch

        self._build()
        return score_batch(rollout, self.scorers, self.cfg.reward.on_error, self.cfg.algo.dynamic_sampling)
