"""`alignray rm train`: reward-model training on Ray with DeepSpeed ranks (a driver module: it imports ray).

Without --config it runs the built-in example (system/presets/rm-quickstart.yaml): a tiny random BERT learns
the embedded restaurant-advice preferences (`builtin:restaurants`) as a causal reward model that must not
reward the spurious remark, then is evaluated on `builtin:restaurants-test`. The output folder RUN/model is
what a RewardWorker scorer (`reward.scorers: [{type: model, path: RUN/model}]`) and `alignray rm eval --model`
load.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ray

from alignray.config import dump_config
from alignray.driver.runlog import new_run_dir
from alignray.errors import AlignrayError
from alignray.rm.config import RewardTrainConfig, load_train_config
from alignray.rm.sources import resolve_sources

START_TIMEOUT_S = 600.0
POLL_S = 0.5
HANG_REPORT_S = 120.0
"""A rank call with no answer for this long is reported with the rank's stack (actors.watchdog)."""


class FitProgress:
    """Rank 0's steps of each fit (a causal `mmd_lambda: auto` or an ensemble has several): a tqdm bar with
    the smoothed loss and accuracy on a terminal (stderr), else a plain line about every 10% of a fit."""

    def __init__(self, enabled: bool):
        self.enabled, self.tty = enabled, enabled and sys.stderr.isatty()
        self.bar, self.fits, self.printed = None, 0, -1

    def show(self, report: dict) -> None:
        if not self.enabled or not report:
            return
        post = {"loss": f"{report['loss']:.4f}", "accuracy": f"{report['accuracy']:.3f}"}
        if report["fits"] != self.fits:  # a new fit: a new bar
            self.close()
            self.fits, self.printed = report["fits"], -1
            if self.tty:
                from tqdm import tqdm

                self.bar = tqdm(total=report["total"], desc=f"rm train [{report['fit']}]", unit="step",
                                dynamic_ncols=True, file=sys.stderr)
        if self.bar is not None:
            self.bar.n = report["step"]
            self.bar.set_postfix(post)
            return
        tenth = report["step"] * 10 // max(report["total"], 1)
        if tenth > self.printed:
            self.printed = tenth
            print(f"rm train [{report['fit']}] step {report['step']}/{report['total']} "
                  + " ".join(f"{k}={v}" for k, v in post.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train_on_ray(cfg: RewardTrainConfig, out_dir: str | Path, progress: FitProgress | None = None) -> dict:
    """`learner.num_ranks` RewardLearner ranks in one placement group (`RankGroup`) train; rank 0's
    summary."""
    from alignray.actors.calls import ActorFault
    from alignray.actors.cluster import check_demands, check_local_processes, connect_ray
    from alignray.actors.ranks import RankGroup
    from alignray.actors.rm_learner import RewardLearner
    from alignray.actors.watchdog import WATCHDOG
    from alignray.driver.capacity import Demand

    lc = cfg.learner
    demands = [Demand("learner", lc.num_ranks, lc.num_cpus, lc.num_gpus)]
    if not (cfg.ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        check_local_processes(demands, cfg.oversubscribe, "oversubscribe")
    connect_ray(cfg.ray_address, lc.num_ranks * lc.num_cpus)
    check_demands(demands)  # never placeable: fail now
    WATCHDOG.start(HANG_REPORT_S, HANG_REPORT_S)  # no silent hang: a stuck rank is reported with its stack
    try:
        group = RankGroup("rm-learner", RewardLearner, cfg.model_dump(mode="json"), lc.num_ranks, lc.num_cpus,
                          lc.num_gpus, START_TIMEOUT_S, max_concurrency=2)
    except ActorFault as fault:
        raise AlignrayError(f"the reward-model ranks did not start: {fault}") from None
    progress = progress or FitProgress(False)
    started = time.perf_counter()
    try:
        pending = {WATCHDOG.launch("rm-learner", name, rank, "train", str(Path(out_dir) / "model")): name
                   for name, rank in zip(group.names(), group.ranks, strict=True)}
        results = {}
        while pending:  # a rank that fails ends the run at once (the others would wait in a collective)
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    results[name] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - user errors re-raised as is; a peer's death named
                    raise AlignrayError("reward-model training failed: "
                                        f"{group.fault_behind(name, exc)}") from None
            try:  # the last one shows the final step; a rank that died is reported by the wait above
                progress.show(ray.get(group.ranks[0].progress.remote(), timeout=60))
            except ray.exceptions.RayError:
                pass
        summary = results[group.names()[0]]
        summary["train_s"] = round(time.perf_counter() - started, 1)
        return summary
    finally:
        WATCHDOG.stop()
        progress.close()
        group.close()


def rm_train_main(config: str | None, overrides: list[str], run_dir: str | None) -> dict:
    """Load (None: the built-in example), check data and backbone, train on Ray, evaluate on eval_data."""
    started = time.perf_counter()
    cfg = load_train_config(config, overrides)
    resolved = resolve_sources(cfg)  # every bad input fails here, before Ray starts
    out = Path(run_dir) if run_dir else new_run_dir("runs/rm")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    if config is None:
        print(f"alignray rm train: the built-in example ({cfg.kind} reward model on {cfg.data}, evaluated on "
              f"{cfg.eval_data}) → {out}", flush=True)
    summary = train_on_ray(resolved, out, FitProgress(cfg.progress))
    # Ray, ranks, process group
    summary["start_s"] = round(time.perf_counter() - started - summary["train_s"], 1)
    print(f"trained {summary['kind']} reward model on {summary['pairs']} pairs with {summary['ranks']} "
          f"DeepSpeed ranks → {out / 'model'}")
    if summary.get("mmd_auto"):  # mmd_lambda: auto — the held-out sweep that chose λ
        (out / "mmd_sweep.json").write_text(json.dumps(summary["mmd_auto"], indent=2))
        print(f"mmd_lambda auto → λ={summary['mmd_lambda']} (sweep: {out / 'mmd_sweep.json'})")
    if cfg.eval_data:
        from alignray.rm.cli import rm_eval_main

        summary["eval"] = rm_eval_main(str(out / "model"), cfg.eval_data, str(out / "eval.json"),
                                       trust_remote_code=cfg.trust_remote_code)
        print(f"evaluation: {out / 'eval.json'}")
    summary["eval_s"] = round(time.perf_counter() - started - summary["start_s"] - summary["train_s"], 1)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"run directory: {out} ({summary['seconds']} s: start {summary['start_s']} s, training "
          f"{summary['train_s']} s, evaluation {summary['eval_s']} s)")
    return summary
