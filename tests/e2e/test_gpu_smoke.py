"""benchmarks/gpu_smoke.py keeps working without a GPU: its smallest case runs for real on CPU (a colocated
quickstart at tiny size, through `alignray train` in a subprocess), a CUDA-only case is recorded as skipped,
and the JSON has one row per case with its status, seconds and numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # an `alignray train` run (Ray, a DeepSpeed rank) in a subprocess

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU stand-in (a GPU runs full sizes)")
def test_the_smoke_runs_on_cpu_and_writes_its_rows(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--out", str(out),
                           "--cases", "quickstart-colocated,cuda-ipc", "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    rows = {r["case"]: r for r in result["rows"]}
    assert list(rows) == ["cuda-ipc", "quickstart-colocated"]  # the script's order, not the command line's
    assert rows["cuda-ipc"]["status"] == "skipped" and "CUDA" in rows["cuda-ipc"]["detail"]
    quick = rows["quickstart-colocated"]
    assert quick["status"] == "passed", quick
    assert quick["steps"] == 3 and quick["seconds"] > 0
    for key in ("reward_first", "reward_last", "gen_s", "train_s", "learner_tokens_per_s"):
        assert isinstance(quick[key], float), key
    assert quick["learner_tokens_per_s"] > 0
    assert quick.get("mfu") is None  # no peak FLOP/s is known for a CPU: no MFU
    assert "| quickstart-colocated | passed |" in proc.stdout  # the table
