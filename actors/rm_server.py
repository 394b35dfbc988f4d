"""RewardModelServer: one copy of every `type: model` scorer, served to all reward workers
(`reward.service.enabled`), requests of several callers batched into one forward (alignray.rewards.batcher).

An async actor: each `score` call is a coroutine waiting on its batch, so a server holds many callers at once;
the forwards themselves run one at a time on the batcher's single model thread. Only strings come in
(prompt, response) and float columns go out; the driver never sees either. Its module imports no torch (the
driver imports it to start servers); the models load in the start call, where the watchdog sees it.
"""

from __future__ import annotations

import numpy as np
import ray

from alignray.actors.watch import WATCHED, Watched
from alignray.config import Config
from alignray.devices import actor_device
from alignray.errors import RewardError
from alignray.rewards.batcher import Batcher


@ray.remote(**WATCHED)
class RewardModelServer(Watched):
    def __init__(self, cfg_dict: dict):
        self.cfg = Config.model_validate(cfg_dict)
        self.models: dict | None = None  # scorer name → RewardModel, loaded by the start call
        self.batcher: Batcher | None = None
        self._device = "cpu"

    def _build(self) -> None:
        if self.models is not None:
            return
        from alignray.rewards.scorers import ModelScorer

        self.begin_stages()
        sc = self.cfg.reward.service
        self._device = actor_device(sc.num_gpus, "reward.service.num_gpus")
        configs = [c for c in self.cfg.reward.scorers if c.type == "model"]
        try:
            models = {c.name: ModelScorer(c, self.cfg.model.trust_remote_code, self._device).model
                      for c in configs}
        except Exception as e:  # noqa: BLE001 - a bad model directory: one clean line, as in a reward worker
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RewardError(f"reward.scorers: the reward-model server cannot load the models: "
                              f"{type(e).__name__}: {first}") from None
        import torch

        torch.set_num_threads(sc.torch_threads)
        self.batcher = Batcher(self._forward, sc.max_batch_size, sc.batch_wait_ms / 1000.0)
        self.models = models
        self.stage(f"reward models loaded on {self._device} ({', '.join(models)})")

    def _forward(self, scorer: str, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """One forward of `scorer`'s model (on the batcher's model thread)."""
        return self.models[scorer].score(prompts, responses, batch_size=max(len(prompts), 1))

    def ready(self) -> bool:
        self._build()
        return True

    def device(self) -> str:
        self._build()
        return self._device

    async def score(self, scorer: str, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """The columns of `scorer` ("reward", and e.g. an ensemble's "std") for these samples, float32 [n]."""
        self._build()
        if scorer not in self.models:
            raise RewardError(f"the reward-model server has no model scorer named {scorer!r} "
                              f"(it serves {sorted(self.models)})")
        return await self.batcher.submit(scorer, prompts, responses)

    def stats(self) -> dict[str, float]:
        """Requests, samples, batches, forwards and the mean batch size (samples per forward) so far."""
        return self.batcher.stats.as_dict() if self.batcher is not None else {}
