"""The run directory, a contract users and tools read:

DIR/config.yaml         resolved config         DIR/metrics.jsonl       one JSON object per step
DIR/rollouts/*.parquet  one row per sample      DIR/checkpoints/step_N  DeepSpeed, hf/, controller.json
DIR/tb/                 TensorBoard events      DIR/quarantine.jsonl    samples whose reward failed (on_error)
DIR/status.json         `alignray status`       DIR/calls.json          calls in flight (the watchdog)
DIR/events.jsonl        faults, hang reports    DIR/control.yaml        scale requests (`alignray scale`)
DIR/mlflow.db, DIR/mlartifacts/, DIR/wandb/     with train.loggers [mlflow, wandb] (alignray.driver.loggers)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from alignray.config import Config, dump_config
from alignray.driver.loggers import make_loggers, scalars

CALLS_FILE = "calls.json"
"""Actor calls in flight and their ages, rewritten each second by the run's watchdog while any runs."""


def new_run_dir(root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    n = 1
    while path.exists():
        path, n = Path(root) / f"{stamp}-{n}", n + 1
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    steps = sorted((Path(run_dir) / "checkpoints").glob("step_*/controller.json"),
                   key=lambda p: int(p.parent.name.split("_")[1]))
    return steps[-1].parent if steps else None


def latest_state(run_dir: str | Path, up_to: int) -> Path | None:
    """The newest complete checkpoint or snapshot (it has controller.json) at a step <= `up_to`: where an
    in-run learner recovery goes back to."""
    found = [p.parent for kind in ("checkpoints", "snapshots")
             for p in (Path(run_dir) / kind).glob("step_*/controller.json")
             if int(p.parent.name.split("_")[1]) <= up_to]
    return max(found, key=lambda p: int(p.name.split("_")[1])) if found else None


class RunLog:
    def __init__(self, run_dir: str | Path, cfg: Config, resume_after: int | None = None):
        """`resume_after`: the checkpoint step a resumed run restarts from; later metric lines are dropped."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(dump_config(cfg))
        kept = []
        if resume_after is not None and (self.dir / "metrics.jsonl").exists():
            kept = [m for m in read_metrics(self.dir) if m["step"] <= resume_after]
        self._metrics = (self.dir / "metrics.jsonl").open("w")
        for m in kept:
            self._metrics.write(json.dumps(m) + "\n")
        self._loggers = make_loggers(cfg.train.loggers, self.dir, cfg.model_dump(mode="json"),
                                     resume=resume_after is not None)

    def log(self, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k,
                 v in metrics.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()
        values = scalars(metrics)
        for logger in self._loggers:
            logger.log(metrics["step"], values)

    def rollback(self, step: int) -> None:
        """In-run learner recovery: metric lines after `step` go (those steps are re-trained and logged
        again)."""
        self._metrics.close()
        kept = [m for m in read_metrics(self.dir) if m["step"] <= step]
        self._metrics = (self.dir / "metrics.jsonl").open("w")
        for m in kept:
            self._metrics.write(json.dumps(m) + "\n")
        self._metrics.flush()

    def note(self, name: str, content: dict) -> None:
        """A one-off fact about the run: printed to stderr and kept as DIR/<name>.json."""
        print(f"alignray: {name}: {json.dumps(content)}", file=sys.stderr)
        (self.dir / f"{name}.json").write_text(json.dumps(content, indent=2) + "\n")

    def quarantine(self, step: int, reports: list[str]) -> None:
        with (self.dir / "quarantine.jsonl").open("a") as f:
            for r in reports:
                f.write(json.dumps({"step": step, "sample": r}) + "\n")

    def close(self) -> None:
        if self._metrics.closed:
            return
        self._metrics.close()
        for logger in self._loggers:  # mlflow uploads the run directory's files here, so this comes last
            logger.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_events(run_dir: str | Path) -> list[dict]:
    """RUN_DIR/events.jsonl's records (alignray.driver.events); [] when the run had none."""
    path = Path(run_dir) / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
