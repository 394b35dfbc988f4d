"""RewardWorker: hosts the configured scorers; rollout batch in, scored batch (plus small stats) out.

Its module imports no torch: a worker with reward functions only never loads it (the driver imports this
module too).
"""

from __future__ import annotations

import sys

import pyarrow as pa
import ray

from alignray.actors.rm_client import LOST_KEY, ServedScorer, ServerSet
from alignray.actors.watch import WATCHED, Watched
from alignray.config import Config
from alignray.config_sections import RewardConfig
from alignray.devices import actor_device
from alignray.errors import RewardError


def build_reward_scorers(rc: RewardConfig, trust_remote_code: bool, own_process: bool = True,
                         device: str = "cpu", env_weight: float | None = None,
                         servers: ServerSet | None = None) -> list:
    """The scorers of `reward.scorers` in this process (reward models load here, on `device`; with `servers`,
    `reward.service`, they are scored there instead), and with `env_weight` (episodes: `rollout.env_weight`)
    the environment's reward `reward_env`. In a process of its own, torch (where they use it) runs
    `reward.torch_threads` threads; a learner rank that scores (train.colocate) keeps its own."""
    from alignray.rewards.scorers import EnvironmentScorer, build_scorers

    try:
        scorers = [ServedScorer(c, servers) if servers is not None and c.type == "model"
                   else build_scorers([c], trust_remote_code, device)[0] for c in rc.scorers]
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
        # reward.service: the model scorers call these servers (the driver sends the ready ones each call)
        self.servers = (ServerSet(0.9 * self.cfg.train.call_timeout_s.score)
                        if self.cfg.reward.service.enabled else None)

    def _build(self) -> None:
        if self.scorers is None:
            self.begin_stages()
            self._device = actor_device(self.cfg.reward.num_gpus, "reward.num_gpus")
            self.scorers = build_reward_scorers(self.cfg.reward, self.cfg.model.trust_remote_code,
                                                device=self._device,
                                                env_weight=self.cfg.rollout.env_reward_weight,
                                                servers=self.servers)
            self.stage(f"scorers built on {self._device} ({', '.join(s.name for s in self.scorers)})")

    def ready(self) -> bool:
        self._build()
        return True

    def device(self) -> str:
        """Where this worker's reward models run: "cpu", or "cuda:0" (the GPU `reward.num_gpus` reserved)."""
        self._build()
        return self._device

    @ray.method(num_returns=2)
    def score(self, rollout: pa.RecordBatch, servers: dict | None = None) -> tuple[pa.RecordBatch, dict]:
        """The scored batch and its stats; `servers` (reward.service): the ready reward-model servers by name,
        and the stats then name those found lost (`LOST_KEY`) for the driver to replace."""
        from alignray.rewards.scorers import score_batch

        self._build()
        if self.servers is not None:
            self.servers.update(servers or {})
        scored, stats = score_batch(rollout, self.scorers, self.cfg.reward.on_error,
                                    self.cfg.algo.dynamic_sampling)
        if self.servers is not None and self.servers.lost:
            stats[LOST_KEY] = dict(self.servers.lost)
        return scored, stats
