"""Metric sinks besides DIR/metrics.jsonl (always written): `train.loggers: [tensorboard, mlflow, wandb]`.

- tensorboard: DIR/tb/ event files.
- mlflow: params (the flattened config), metrics per step, and at the end the run directory's files as
  artifacts, to a SQLite store inside the run directory (DIR/mlflow.db, artifacts in DIR/mlartifacts/) unless
  MLFLOW_TRACKING_URI names another; read it with `mlflow.MlflowClient("sqlite:///DIR/mlflow.db")` or `mlflow
  ui --backend-store-uri`. Calls run on one background thread: creating the store (≈10 s of schema migrations)
  overlaps actor start-up, and a slow tracking server never stalls a step.
- wandb: offline into DIR/wandb/ unless WANDB_API_KEY or WANDB_MODE says otherwise (`wandb sync
  DIR/wandb/offline-*`).
mlflow and wandb are optional extras (`pip install 'alignray[mlflow]'`, `'alignray[wandb]'`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from alignray.errors import ConfigError
from alignray.quiet import quiet, verbose

EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
SKIP_ARTIFACTS = {"mlflow.db", "mlartifacts", "mlflow_run_id", "wandb", "checkpoints", "snapshots", "tb"}


def scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics line, without the step itself."""
    return {k: float(v) for k, v in metrics.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys → strings (lists as JSON): what trackers take as params."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree if isinstance(tree, str) else json.dumps(tree)}


def _need(module: str, name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"train.loggers: '{name}' needs the {EXTRAS[name]} package: "
                          f"pip install 'alignray[{EXTRAS[name]}]'") from None


class TensorBoardLogger:
    """TensorBoard's own numpy-only writer (not torch's SummaryWriter: the driver never imports torch)."""

    def __init__(self, run_dir: Path, config: dict, resume: bool):
        from tensorboard.summary import Writer

        self.writer = Writer(str(run_dir / "tb"))

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowLogger:
    def __init__(self, run_dir: Path, config: dict, resume: bool):
        _need("mlflow", "mlflow")
        self.dir, self.config = run_dir.resolve(), config
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.dir / 'mlflow.db'}"
        self.resume = resume
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignray-mlflow")
        self._calls: list[Future] = [self._thread.submit(self._open)]
        self._warned = False

    def _open(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        quiet()
        if not verbose():  # "Creating initial MLflow database tables..." and the like
            logging.getLogger("mlflow").setLevel(logging.WARNING)

        self.client = MlflowClient(tracking_uri=self.uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "alignray")
        found = self.client.get_experiment_by_name(name)
        local = self.uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ
        experiment = found.experiment_id if found else self.client.create_experiment(
            name, artifact_location=(self.dir / "mlartifacts").as_uri() if local else None)
        id_file = self.dir / "mlflow_run_id"
        if self.resume and id_file.is_file():  # a resumed run goes on in the same MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment, run_name=self.dir.name).info.run_id
        id_file.write_text(self.run_id + "\n")
        params = [Param(k, v[:6000]) for k, v in flatten(self.config).items()]
        for i in range(0, len(params), 100):  # the tracking API takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _finish(self) -> None:
        for path in sorted(self.dir.iterdir()):
            if path.name in SKIP_ARTIFACTS:
                continue
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)

    def log(self, step: int, values: dict[str, float]) -> None:
        self._calls.append(self._thread.submit(self._log, step, values))
        self._report(done_only=True)

    def _report(self, done_only: bool) -> None:
        """A failing tracker is one warning line, never a failed run (metrics.jsonl has everything)."""
        for call in [c for c in self._calls if c.done() or not done_only]:
            self._calls.remove(call)
            error = call.exception()
            if error is not None and not self._warned:
                self._warned = True
                print(f"alignray: warning: mlflow ({self.uri}): {type(error).__name__}: {error}",
                      file=sys.stderr)

    def close(self) -> None:
        self._calls.append(self._thread.submit(self._finish))
        self._thread.shutdown(wait=True)
        self._report(done_only=False)


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict, resume: bool):
        wandb = _need("wandb", "wandb")
        offline = not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "alignray"), name=run_dir.name,
                              dir=str(run_dir), config=config, mode="offline" if offline else None,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def make_loggers(names: list[str], run_dir: Path, config: dict, resume: bool = False) -> list:
    classes = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}
    return [classes[name](run_dir, config, resume) for name in dict.fromkeys(names)]
