"""`alignray rm train`: reward-model training on Ray with DeepSpeed ranks; the output folder is what a RewardWorker
scorer (`reward.scorers: [{type: model, path: OUT/model}]`) and `alignray rm eval --model` load."""

from __future__ import annotations

import json
from pathlib import Path

import ray

from alignray.config import dump_config
from alignray.rm_config import RmRunConfig, load_rm_config
from alignray.runlog import new_run_dir


def train_reward_model_on_ray(cfg: RmRunConfig, out_dir: str | Path) -> dict:
    """Start `learner.num_ranks` RewardLearner actors in one placement group, train, return rank 0's summary."""
    from ray.util.placement_group import remove_placement_group

    from alignray.actors.groups import in_group, reserve
    from alignray.actors.rm_learner import RewardLearner
    from alignray.controller import connect_ray

    lc = cfg.learner
    connect_ray(cfg.ray_address, lc.num_ranks * lc.num_cpus)
    pg = reserve("rm-learner", lc.num_ranks, lc.num_cpus, lc.num_gpus)
    ranks = [RewardLearner.options(**in_group(pg, r, lc.num_cpus, lc.num_gpus)).remote(
        cfg.model_dump(mode="json"), r, lc.num_ranks) for r in range(lc.num_ranks)]
    try:
        addr, port = ray.get(ranks[0].address.remote())
        model_dir = Path(out_dir) / "model"
        return ray.get([w.train.remote(addr, port, str(model_dir)) for w in ranks])[0]
    finally:
        for rank in ranks:
            ray.kill(rank, no_restart=True)
        remove_placement_group(pg)


def rm_train_main(config: str, overrides: list[str], run_dir: str | None) -> dict:
    cfg = load_rm_config(config, overrides)
    out = Path(run_dir) if run_dir else new_run_dir("runs/rm")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    summary = train_reward_model_on_ray(cfg, out)
    print(f"trained {summary['kind']} reward model on {summary['pairs']} pairs with {summary['ranks']} DeepSpeed "
          f"ranks → {out / 'model'}")
    if summary.get("mmd_auto"):  # mmd_lambda: auto — the held-out sweep that chose λ
        (out / "mmd_sweep.json").write_text(json.dumps(summary["mmd_auto"], indent=2))
        print(f"mmd_lambda auto → λ={summary['mmd_lambda']} (sweep: {out / 'mmd_sweep.json'})")
    if cfg.eval_data:
        from alignray.rewards.cli import rm_eval_main

        summary["eval"] = rm_eval_main(str(out / "model"), cfg.eval_data, str(out / "eval.json"),
                                       trust_remote_code=cfg.model.trust_remote_code)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
