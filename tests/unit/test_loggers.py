"""TensorBoard, MLflow and W&B for real, offline: the run directory holds each store, readable by its own
library."""

from __future__ import annotations

import json
import struct
import sys

import pytest

from alignray.config import load_config
from alignray.driver.loggers import flatten
from alignray.driver.runlog import RunLog
from alignray.errors import ConfigError

STEPS = [{"step": s, "policy_version": s - 1, "reward/mean": 0.1 * s, "kl": float("nan"),
          "timing/train_s": 0.5}
         for s in (1, 2, 3)]


@pytest.fixture
def offline(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_MODE",
                "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)


def test_flatten_config_to_params():
    params = flatten(load_config().model_dump(mode="json"))
    assert params["algo.name"] == "grpo" and params["learner.num_ranks"] == "2"
    assert json.loads(params["reward.scorers"])[0]["name"] == "vowels"


@pytest.mark.usefixtures("offline")
def test_tensorboard_scalars_read_back_by_tensorboard(tmp_path):
    """TensorBoard's own reader (the one its UI uses) sees every logged scalar at its step."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    cfg = load_config(None, ["train.loggers=[tensorboard]"])
    log = RunLog(tmp_path / "run", cfg)
    for m in STEPS:
        log.log(m)
    log.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    events = acc.Tensors("reward/mean")
    assert [e.step for e in events] == [m["step"] for m in STEPS]
    assert ([float(e.tensor_proto.float_val[0]) for e in events]
            == pytest.approx([m["reward/mean"] for m in STEPS]))


def test_all_three_loggers_write_inside_the_run_directory(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    cfg = load_config(None, ["train.loggers=[tensorboard, mlflow, wandb]"])
    run_dir = tmp_path / "run"
    log = RunLog(run_dir, cfg)
    for m in STEPS:
        log.log(m)
    (run_dir / "rollouts").mkdir()
    (run_dir / "rollouts" / "step_1.parquet").write_bytes(b"PAR1")
    log.close()

    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert (run.data.params["algo.name"] == "grpo"
            and run.data.params["train.loggers"] == '["tensorboard", "mlflow", "wandb"]')
    history = client.get_metric_history(run.info.run_id, "reward/mean")
    assert [(h.step, round(h.value, 6)) for h in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert "kl" not in run.data.metrics  # NaN is left out, never logged as a number
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "rollouts"} <= artifacts and "mlflow.db" not in artifacts
    assert run.info.artifact_uri.startswith((run_dir / "mlartifacts").resolve().as_uri())

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    records = list(wandb_records(next(offline_runs[0].glob("run-*.wandb"))))
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], round(h["reward/mean"], 6)) for h in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert records[-1].WhichOneof("record_type") == "exit"  # finished: ready for `wandb sync`


def wandb_records(path):
    """The protobuf records of an offline W&B run file (a LevelDB-style log: 32 KiB blocks of chunks with a
    7-byte header — crc32, length, type — after the 7-byte file header). wandb itself no longer ships a
    reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


@pytest.mark.usefixtures("offline")
def test_a_missing_extra_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"train.loggers: 'mlflow' needs the mlflow package: "
                                          r"pip install 'alignray\[mlflow\]'"):
        RunLog(tmp_path / "run", load_config(None, ["train.loggers=[mlflow]"]))


def test_unknown_logger_is_rejected_by_the_config():
    with pytest.raises(ConfigError,
                       match=r"train.loggers.0: Input should be 'tensorboard', 'mlflow' or 'wandb'"):
        load_config(None, ["train.loggers=[neptune]"])
