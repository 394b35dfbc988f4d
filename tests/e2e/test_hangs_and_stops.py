"""No silent hang, and a clean stop, with the real `alignray` process: a reward function that blocks forever
is reported with where it is stuck, `alignray status` shows the stuck call, and SIGTERM / SIGINT (at a seeded
random moment) end the run with one line, exit 143 / 130, and not one process of the run left behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import tiny_overrides

pytestmark = pytest.mark.slow
GUARD_S = 300
"""Only so that a broken run cannot hang the suite: every wait below ends on its condition long before."""

BLOCKER = '''
import threading
calls = 0

def score(prompt: str, response: str) -> float:
    """Answers the first batches, then blocks forever: a judge service that stopped answering."""
    global calls
    calls += 1
    if calls > {after}:
        threading.Event().wait()
    return float(len(response) % 3)
'''


def start_run(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "DS_ACCELERATOR": "cpu"}
    argv = [sys.executable, "-m", "alignray.cli", "train", "--run-dir", str(tmp_path / "run"),
            *tiny_overrides(**{"train.steps": 40, "train.save_interval": 2}), *overrides]
    return subprocess.Popen(argv, env=env, stdout=open(tmp_path / "stdout", "w"),
                            stderr=open(tmp_path / "stderr", "w"))


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def stop_and_check(run: subprocess.Popen, tmp_path: Path, sig: int) -> str:
    """Send `sig` to the run's own process only; it must exit 128 + sig with one line, leaving nothing."""
    processes = tree(run.pid)
    assert any("Worker" in " ".join(p.cmdline()) for p in processes if p.is_running())  # the actors are there
    os.kill(run.pid, sig)
    assert run.wait(timeout=GUARD_S) == 128 + sig
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes),
             "every process of the run gone")
    err = (tmp_path / "stderr").read_text()
    for noise in ("Traceback", "SIGTERM received", "PC: @", "*** "):
        assert noise not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"alignray: stopped by {signal.Signals(sig).name} at step "), err[-2000:]
    return last


def test_a_blocked_reward_is_reported_where_it_is_stuck_then_sigterm_stops_cleanly(tmp_path):
    (tmp_path / "blocker.py").write_text(BLOCKER.format(after=24))
    run = start_run(tmp_path, "train.hang_report_s=3", "train.call_timeout_s.score=600",
                    "reward.scorers=[{name: judge, function: 'blocker:score'}]")
    stderr = tmp_path / "stderr"
    wait_for(lambda: "is here" in stderr.read_text() and "blocker.py" in stderr.read_text(),
             "the hang report")
    err = stderr.read_text()
    warning = next(line for line in err.splitlines() if "no progress" in line)
    assert warning.startswith("alignray: warning: reward reward-0 no progress at step ")
    assert "score has run" in warning
    stack = err[err.index("is here"):].splitlines()[1:]
    assert any("blocker.py" in line and "in score: threading.Event().wait()" in line for line in stack), stack
    assert any("rewards/scorers.py" in line for line in stack), stack
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert '"cause": "no progress"' in events and "blocker.py" in events

    status = subprocess.run([sys.executable, "-m", "alignray.cli", "status", str(tmp_path / "run")],
                            capture_output=True, text=True, check=True).stdout
    assert "calls in flight: reward-0 score" in status, status

    last = stop_and_check(run, tmp_path, signal.SIGTERM)
    assert f"continue with: alignray train --resume {tmp_path / 'run'}" in last


@pytest.mark.parametrize("seed", [3])
def test_sigint_at_a_seeded_random_moment_stops_cleanly(tmp_path, seed):
    """Also: while the actors came up, each stage they passed was a line (`check_start_up_lines`)."""
    run = start_run(tmp_path, "train.steps=400")  # far more steps than the signal lets it run
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, "the first step")
    time.sleep(random.Random(seed).uniform(0.0, 4.0))  # the moment of the signal: seeded, anywhere in a step
    stop_and_check(run, tmp_path, signal.SIGINT)
    check_start_up_lines(tmp_path)


def check_start_up_lines(tmp_path: Path) -> None:
    """While the actors come up, each stage they pass is a line, with seconds (here: the whole quickstart)."""
    out = (tmp_path / "stdout").read_text()
    stages = [line for line in out.splitlines() if line.startswith("alignray: start-up")]
    for member, stage in [("learner-0", "imported DeepSpeed"), ("learner-1", "DeepSpeed ready"),
                          ("rollout-0", "hf engine built"), ("rollout-0", "first weights loaded"),
                          ("reward-0", "scorers built")]:
        assert any(f"{member}: {stage}" in line for line in stages), (member, stage, stages)
    assert len(stages) == len(set(stages))  # each stage once
