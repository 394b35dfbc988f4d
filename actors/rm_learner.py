"""RewardLearner: one DeepSpeed rank of `alignray rm train`, launched and joined by `actors.ranks.RankGroup`.
Every rank builds the same model from the same seed, trains on its slice of each global batch (gradients
all-reduced by DeepSpeed), and rank 0 saves the result. A threaded actor (max_concurrency 2): the driver reads
`progress` while `train` runs."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

import ray

from alignray.actors.ranks import (
    deepspeed_config,
    init_process_group,
    prepare_rank,
    rank_address,
)
from alignray.actors.watch import WATCHED, Watched
from alignray.rm.config import RewardTrainConfig

SMOOTH_STEPS = 20
"""The progress shows loss and accuracy averaged over this many recent steps of rank 0's slice."""


@ray.remote(**WATCHED)
class RewardLearner(Watched):
    def __init__(self, cfg_dict: dict, rank: int, world: int):
        self.cfg = RewardTrainConfig.model_validate(cfg_dict)
        self.rank, self.world = rank, world
        self.use_gpu = prepare_rank(self.cfg.learner.torch_threads, self.cfg.learner.num_gpus)
        self._lock = threading.Lock()
        self._report: dict = {}
        self._recent: deque = deque(maxlen=SMOOTH_STEPS)

    def address(self) -> tuple[str, int]:
        return rank_address()

    def setup(self, master_addr: str, master_port: int) -> None:
        from alignray.devices import actor_device

        actor_device(self.cfg.learner.num_gpus, "learner.num_gpus")  # a GPU rank without CUDA: one clean line
        init_process_group(self.rank, self.world, master_addr, master_port, self.cfg.learner.backend,
                           self.use_gpu)

    def progress(self) -> dict:
        """The latest step of the current fit: {fit, fits, step, total, loss, accuracy} (smoothed); {} before
        the first."""
        with self._lock:
            return dict(self._report)

    def _on_step(self, report: dict) -> None:
        with self._lock:
            if report["step"] == 1:
                self._recent.clear()
                self._report["fits"] = self._report.get("fits", 0) + 1
            self._recent.append((report["loss"], report["accuracy"]))
            n = len(self._recent)
            self._report.update(report, loss=sum(x[0] for x in self._recent) / n,
                                accuracy=sum(x[1] for x in self._recent) / n)

    def train(self, out_dir: str) -> dict | None:
        """Train; rank 0 writes `out_dir` (loadable by `load_reward_model` and the RewardWorker) and returns a
        summary."""
        import deepspeed

        from alignray.rm.loop import Distributed, make_tokenizer, train_reward_model
        from alignray.rm.preference_data import load_preferences

        cfg, lc = self.cfg, self.cfg.learner
        ds = deepspeed_config(cfg.batch_size, self.world, cfg.grad_clip, lc.zero_stage)

        def wrap(model, optimizer):
            return deepspeed.initialize(model=model, optimizer=optimizer, config=ds)[0]

        data = load_preferences(cfg.data, attributes=cfg.attributes)
        tokenizer = make_tokenizer(cfg, data)
        dist = Distributed(self.rank, self.world, wrap, self._on_step if self.rank == 0 else None)
        model = train_reward_model(cfg, data, tokenizer, dist=dist)
        if self.rank != 0:
            return None
        model.save(Path(out_dir))
        summary = {"pairs": len(data), "kind": cfg.kind, "ranks": self.world, "out": out_dir}
        metadata = getattr(model, "metadata", {})
        if cfg.kind == "causal":  # the resolved recipe, and the λ sweep when mmd_lambda was "auto"
            summary.update({k: metadata.get(k) for k in ("mmd_lambda", "cf_weight", "mmd_condition",
                                                         "mmd_auto")})
        return summary
