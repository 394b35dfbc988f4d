"""Every actor uses the device it is given: on a Ray node that advertises a GPU while torch has no CUDA (a CPU
build of torch on a GPU node, the one case that used to fall back to the CPU silently), a rollout or reward
worker given `num_gpus` stops with one line naming the field; given none, it says it runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # a Ray cluster of its own, in a subprocess

SCRIPT = r"""
import json
import ray
from alignray.actors.reward import RewardWorker
from alignray.actors.rollout import RolloutWorker
from alignray.config import load_config
from alignray.errors import AlignrayError

# a node that advertises one GPU (Ray then sets CUDA_VISIBLE_DEVICES for the actors it places there)
ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
         runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}}, logging_level="WARNING")
out = {}
for gpus in (0.25, 0.0):
    cfg = load_config(None, [f"rollout.num_gpus={gpus}", f"reward.num_gpus={gpus}"]).model_dump(mode="json")
    actors = {"rollout": RolloutWorker.options(num_gpus=gpus).remote(cfg, "r0"),
              "reward": RewardWorker.options(num_gpus=gpus).remote(cfg)}
    for role, actor in actors.items():
        try:
            out[f"{role} {gpus}"] = ray.get(actor.device.remote())
        except AlignrayError as e:  # the actor's user error, re-raised by ray.get
            out[f"{role} {gpus}"] = "error: " + str(getattr(e, "cause", None) or e)
        ray.kill(actor)
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA (this one has it)")
def test_a_reserved_gpu_without_cuda_is_one_clean_error_not_a_cpu_fallback():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["rollout 0.0"] == "cpu" and out["reward 0.0"] == "cpu"
    for role in ("rollout", "reward"):
        message = out[f"{role} 0.25"]
        assert message.startswith(f"error: {role}.num_gpus=0.25: this {role} worker has no CUDA device "
                                  "(torch.cuda.is_available() is False)"), message
        assert "\n" not in message
