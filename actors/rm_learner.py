"""RewardLearner: one DeepSpeed rank of `alignray rm train`. Every rank builds the same model from the same seed, trains
on its slice of each global batch (gradients all-reduced by DeepSpeed), and rank 0 saves the result."""

from __future__ import annotations

from pathlib import Path

import ray

from alignray.actors.learner import init_process_group, prepare_rank, rank_address
from alignray.rm_config import RmRunConfig


@ray.remote
class RewardLearner:
    def __init__(self, cfg_dict: dict, rank: int, world: int):
        self.cfg = RmRunConfig.model_validate(cfg_dict)
        self.rank, self.world = rank, world
        self.use_gpu = prepare_rank(self.cfg.learner.torch_threads, self.cfg.learner.num_gpus)

    def address(self) -> tuple[str, int]:
        return rank_address()

    def train(self, master_addr: str, master_port: int, out_dir: str) -> dict | None:
        """Train; rank 0 writes `out_dir` (loadable by `load_reward_model` and the RewardWorker) and returns a summary."""
        import deepspeed

        from alignray.rewards.train import Distributed, make_tokenizer, train_reward_model
        from alignray.rm_config import load_training_data

        init_process_group(self.rank, self.world, master_addr, master_port, self.cfg.learner.backend, self.use_gpu)
        lc, mc = self.cfg.learner, self.cfg.model
        ds = {"train_micro_batch_size_per_gpu": mc.batch_size, "gradient_accumulation_steps": 1,
              "train_batch_size": mc.batch_size * self.world, "gradient_clipping": mc.grad_clip,
              "zero_optimization": {"stage": lc.zero_stage}, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}

        def wrap(model, optimizer):
            return deepspeed.initialize(model=model, optimizer=optimizer, config=ds)[0]

        data = load_training_data(self.cfg)
        tokenizer = make_tokenizer(mc, data)
        model = train_reward_model(mc, data, tokenizer, dist=Distributed(self.rank, self.world, wrap))
        if self.rank != 0:
            return None
        model.save(Path(out_dir))
        summary = {"pairs": len(data), "kind": mc.kind, "ranks": self.world, "out": out_dir}
        metadata = getattr(model, "metadata", {})
        if mc.kind == "causal":  # the resolved recipe, and the λ sweep when mmd_lambda was "auto"
            summary.update({k: metadata.get(k) for k in ("mmd_lambda", "cf_weight", "mmd_condition", "mmd_auto")})
        return summary
