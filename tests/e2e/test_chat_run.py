"""End to end: chat-format Parquet prompts, rendered with the tokenizer's own template, train; the MLflow
store the run leaves in its directory holds the params, every step's metrics and the run's files (rollouts
included)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides

from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.tokenizer import build_byte_tokenizer

pytestmark = pytest.mark.slow

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_parquet_prompts_train_and_mlflow_keeps_the_run(ray_cluster, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tok = build_byte_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(tmp_path / "tok")
    chats = [[{"role": "user", "content": f"Say {word}."}] for word in ("hi", "yes", "more", "aeiou", "sun",
                                                                        "owl")]
    pq.write_table(pa.table({"messages": chats}), tmp_path / "chat.parquet")
    cfg = load_config(None, tiny_overrides(**{"train.steps": 2,
                                              "data.prompts": str(tmp_path / "chat.parquet"),
                                              "model.tokenizer": str(tmp_path / "tok"),
                                              "train.loggers": "[tensorboard, mlflow]"}))
    run_dir = tmp_path / "run"
    controller = Controller(cfg, run_dir)
    try:
        history = controller.run()
    finally:
        controller.close()
    assert [m["step"] for m in history] == [1, 2]

    rollouts = pq.read_table(run_dir / "rollouts")
    prompts = set(rollouts.column("prompt").to_pylist())
    assert prompts and all(p.startswith("<|user|>Say ") and p.endswith(".\n<|assistant|>") for p in prompts)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED" and run.data.params["data.prompts"] == str(tmp_path / "chat.parquet")
    assert [h.step for h in client.get_metric_history(run.info.run_id, "reward/mean")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "rollouts"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "rollouts")  # the recorder flushed before the upload
