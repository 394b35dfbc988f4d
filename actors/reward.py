"""RewardWorker: hosts the configured scorers; rollout batch in, scored batch (plus small stats) out."""

from __future__ import annotations

import os

import pyarrow as pa
import ray
import torch

from alignray.config import Config
from alignray.errors import RewardError
from alignray.rewards.scorers import build_scorers, score_batch


@ray.remote
class RewardWorker:
    def __init__(self, cfg_dict: dict):
        self.cfg = Config.model_validate(cfg_dict)
        torch.set_num_threads(self.cfg.reward.torch_threads)
        try:
            self.scorers = build_scorers(self.cfg.reward.scorers, self.cfg.model.trust_remote_code)
        except Exception as e:  # noqa: BLE001 - e.g. a reward module only the workers have, failing to import
            raise RewardError(f"reward.scorers: cannot build the scorers on this worker: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None

    def ready(self) -> bool:
        return True

    def pid(self) -> int:
        """This worker's process id (chaos tests kill -9 it; `alignray status` shows it)."""
        return os.getpid()

    @ray.method(num_returns=2)
    def score(self, rollout: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
        return score_batch(rollout, self.scorers, self.cfg.reward.on_error)
