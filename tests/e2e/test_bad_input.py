"""Every bad input is one `alignray: error:` line naming the field, file, line or role, exit 2, no traceback.

The model, tokenizer, reward-function and prompt-file cases are answered before Ray starts; a run the cluster
can never hold is answered at once, before any placement group waits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import ray
from conftest import tiny_overrides

from alignray.cli import main


def one_line_error(capsys, argv: list[str], needle: str) -> str:
    """Run the CLI; it must exit 2 with exactly one error line holding `needle` and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("alignray: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_ray_started():
    was_up = ray.is_initialized()
    yield
    assert ray.is_initialized() == was_up  # the error came before connecting to (or starting) Ray


@pytest.mark.usefixtures("no_ray_started")
@pytest.mark.parametrize("override, needle", [
    ("model.path=/no/such/model", "model.path: /no/such/model: no such folder"),
    ("model.tokenizer=./no/such/tokenizer", "model.tokenizer: ./no/such/tokenizer: no such folder"),
    ("model.path=someorg/not-cached",
     "model.path: someorg/not-cached: not a local folder, and not in the hub cache"),
])
def test_missing_model_or_tokenizer(tmp_path, capsys, override, needle):
    one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run"), override], needle)


@pytest.mark.usefixtures("no_ray_started")
def test_model_folder_without_config(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run"), f"model.path={tmp_path / 'm'}"],
                   f"model.path: {tmp_path / 'm'} has no config.json")


@pytest.mark.usefixtures("no_ray_started")
def test_reward_module_that_does_not_import(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_reward.py").write_text("import no_such_dependency_xyz\n\n"
                                               "def score(p, r):\n    return 0.0\n")
    (tmp_path / "fine_reward.py").write_text("def other(p, r):\n    return 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scorer = "reward.scorers=[{name: mine, function: 'broken_reward:score'}]"
    one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run"), scorer],
                   "reward.scorers[0] (mine): function 'broken_reward:score': module broken_reward does not "
                   "import: ModuleNotFoundError: No module named 'no_such_dependency_xyz'")
    scorer = "reward.scorers=[{name: mine, function: 'fine_reward:score'}]"
    one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run"), scorer],
                   "module fine_reward has no function 'score'")


@pytest.mark.usefixtures("no_ray_started")
def test_environment_that_does_not_import_or_lacks_step(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_env.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "half_env.py").write_text("class Env:\n    def reset(self, row):\n        return ''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    train = ["train", "--run-dir", str(tmp_path / "run"), "rollout.max_turns=2", "reward.scorers=[]"]
    one_line_error(capsys, [*train, "rollout.env=broken_env:Env"],
                   "rollout.env: 'broken_env:Env': module broken_env does not import: ModuleNotFoundError: "
                   "No module named 'no_such_dependency_xyz'")
    one_line_error(capsys, [*train, "rollout.env=half_env:Env"],
                   "rollout.env: environment 'half_env:Env': class Env has no step method")


@pytest.mark.usefixtures("no_ray_started")
def test_non_utf8_and_binary_prompt_files(tmp_path, capsys):
    good = json.dumps({"prompt": "hello"}).encode()
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(good + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run"), f"data.prompts={latin1}"],
                   f"{latin1}:2: not UTF-8 text (byte 0xe9 at byte column 16)")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x89\x00\x01\x02" * 64)
    one_line_error(capsys, ["train", "--run-dir", str(tmp_path / "run"), f"data.prompts={binary}"],
                   f"{binary}:1: binary data (a NUL byte at column 2)")


def test_gpu_on_a_cpu_only_cluster_fails_at_once(ray_cluster, tmp_path, capsys):
    """No GPU on any node and no autoscaler: the run stops before any placement group is created."""
    argv = ["train", "--run-dir", str(tmp_path / "run"), *tiny_overrides(**{"rollout.num_gpus": 1})]
    one_line_error(capsys, argv,
                   "cannot place the run: rollout.num_gpus=1: rollout needs 1 GPU per actor, but the "
                                 "cluster (no autoscaler) has no GPU")
    assert not [pg for pg in ray.util.placement_group_table().values() if pg["state"] == "PENDING"]


def test_rm_train_asking_for_a_gpu_the_cluster_lacks_fails_at_once(ray_cluster, tmp_path, capsys):
    """`alignray rm train` checks its ranks as `train` checks its roles: no placement group waits for a
    GPU."""
    argv = ["rm", "train", "--run-dir", str(tmp_path / "rm"), "learner.num_gpus=1"]
    one_line_error(capsys, argv,
                   "cannot place the run: learner.num_gpus=1: learner needs 1 GPU per actor, but the "
                                 "cluster (no autoscaler) has no GPU")
    assert not [pg for pg in ray.util.placement_group_table().values() if pg["state"] == "PENDING"]


def test_more_cpus_than_the_cluster_has(ray_cluster):
    from alignray.actors.cluster import check_capacity
    from alignray.config import load_config
    from alignray.errors import AlignrayError

    total = int(ray.cluster_resources()["CPU"])
    with pytest.raises(AlignrayError, match=rf"needs {total + 2} CPUs \(learner {total} × 1 \+ rollout 1 × 1 "
                                            rf"\+ reward 1 × 1\), but the cluster \(no autoscaler\) "
                                            rf"has {total}"):
        check_capacity(load_config(None, [f"learner.num_ranks={total}"]))
    check_capacity(load_config(None, tiny_overrides()))  # the quickstart fits


def test_reward_module_only_the_worker_lacks_is_one_line(ray_cluster):
    """A module the driver cannot find is left to the worker; its start call fails with a user error (one
    line on the driver, never retried) that names the scorer's problem."""
    from alignray.actors.reward import RewardWorker
    from alignray.config import load_config
    from alignray.errors import RewardError

    cfg = load_config(None, ["reward.scorers=[{name: mine, function: 'nowhere_xyz.rewards:score'}]"])
    worker = RewardWorker.remote(cfg.model_dump(mode="json"))
    with pytest.raises(RewardError, match="reward.scorers: cannot build the scorers on this worker: "
                                          "ModuleNotFoundError: No module named 'nowhere_xyz'"):
        ray.get(worker.ready.remote())


def test_with_an_autoscaler_the_wait_is_shown_and_only_its_maximum_is_an_error(ray_cluster, monkeypatch,
                                                                               capsys):
    from alignray.actors import cluster
    from alignray.config import load_config
    from alignray.errors import AlignrayError

    gpu_run = load_config(None, ["rollout.num_gpus=1"])
    monkeypatch.setattr(cluster, "_autoscaler", lambda: (True, {"CPU": 64.0, "GPU": 8.0}))
    cluster.check_capacity(gpu_run)  # may come: the run waits, and says so
    assert "alignray: waiting for the autoscaler (up to the placement timeout): rollout.num_gpus=1" \
        in capsys.readouterr().err
    monkeypatch.setattr(cluster, "_autoscaler", lambda: (True, {"CPU": 64.0}))
    with pytest.raises(AlignrayError, match="but the autoscaler's maximum has no GPU"):
        cluster.check_capacity(gpu_run)
    # grows, maximum unknown: never an error
    monkeypatch.setattr(cluster, "_autoscaler", lambda: (True, None))
    cluster.check_capacity(load_config(None, ["learner.num_ranks=500"]))


def test_a_driver_started_local_cluster_has_no_autoscaler(ray_cluster):
    from alignray.actors.cluster import _autoscaler

    assert _autoscaler() == (False, None)


def test_a_local_run_asking_for_gpus_fails_before_anything_loads(monkeypatch):
    """No cluster address: the local Ray would be this machine; checked before torch, models or Ray start."""
    from alignray.actors import cluster
    from alignray.config import load_config
    from alignray.errors import AlignrayError

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # whatever this machine has, none is visible
    with pytest.raises(AlignrayError,
                       match=r"^cannot place the run: learner.num_gpus=1: learner needs 1 GPU per "
                             r"actor, but this machine \(a local Ray, no cluster address\) has no GPU$"):
        cluster.check_local_capacity(load_config(None, ["learner.num_gpus=1"]), address=None)
    # CPUs: sized to fit, up to 4 processes per core; more is an error unless the user insists
    crowd = 4 * (os.cpu_count() or 1) + 1
    with pytest.raises(AlignrayError,
                       match=rf"^too many processes for this machine: learner.num_ranks={crowd}: "
                                            r".* or set train.oversubscribe=true to run anyway$"):
        cluster.check_local_capacity(load_config(None, [f"learner.num_ranks={crowd}"]), address=None)
    cluster.check_local_capacity(load_config(None, [f"learner.num_ranks={crowd}",
                                                    "train.oversubscribe=true"]),
                                 address=None)
    # a cluster: later
    cluster.check_local_capacity(load_config(None, ["learner.num_gpus=1"]), address="auto")


@pytest.mark.parametrize("command, field", [("train", "learner.num_ranks"), ("rm train", "learner.num_ranks"),
                                            ("train", "rollout.num_workers")])
def test_an_oversubscribed_local_run_is_one_line_before_anything_starts(tmp_path, command, field):
    """A fresh process, no cluster: more actor processes than 4 per core is refused before Ray starts."""
    crowd = 4 * (os.cpu_count() or 1) + 1
    argv = [sys.executable, "-m", "alignray.cli", *command.split(), "--run-dir", str(tmp_path / "run"),
            f"{field}={crowd}"]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("alignray: error:")]
    assert len(lines) == 1 and f"{field}={crowd}: the run starts" in lines[0], out.stderr
    assert "oversubscribe=true" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "config.yaml").exists() or command == "rm train"


@pytest.mark.usefixtures("no_ray_started")
def test_rm_eval_with_a_missing_model_or_data_is_one_line(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    one_line_error(capsys, ["rm", "eval", "--model", "/no/such/model", "--data", str(data)],
                   "--model /no/such/model: no such folder")
    one_line_error(capsys, ["rm", "eval", "--model", str(tmp_path), "--data", str(data)],
                   f"--model {tmp_path}: not a reward model folder")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    one_line_error(capsys, ["rm", "eval", "--model", str(tmp_path / "rm"), "--data",
                            str(tmp_path / "no.jsonl")],
                   f"--data {tmp_path / 'no.jsonl'}: file not found")

