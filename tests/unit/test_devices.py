"""Where actors run (`alignray.devices`): the placement rule, `--device`, peak FLOP/s and MFU,
hand-computed."""

from __future__ import annotations

import pytest
import torch

from alignray.cli import build_parser
from alignray.devices import actor_device, device_for, mfu, peak_flops, resolve_device
from alignray.errors import AlignrayError


@pytest.mark.parametrize("num_gpus, cuda, index, want", [
    (0, False, 0, "cpu"), (0, True, 0, "cpu"),  # no GPU reserved: CPU, even where CUDA exists
    (0.25, True, 0, "cuda:0"), (1, True, 0, "cuda:0"), (2, True, 1, "cuda:1"),
])
def test_device_for_places_an_actor_on_the_gpu_it_reserved(num_gpus, cuda, index, want):
    assert device_for(num_gpus, cuda, "rollout.num_gpus", index) == want


@pytest.mark.parametrize("field, role", [("rollout.num_gpus", "rollout worker"),
                                         ("reward.num_gpus", "reward worker"),
                                         ("learner.num_gpus", "learner rank")])
def test_a_gpu_reserved_without_cuda_is_one_line_naming_the_field(field, role):
    with pytest.raises(AlignrayError) as err:
        device_for(0.25, False, field)
    message = str(err.value)
    assert message.startswith(f"{field}=0.25: this {role} has no CUDA device "
                              "(torch.cuda.is_available() is False)")
    assert "\n" not in message and f"{field}=0" in message  # the way out is named


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_actor_device_on_this_cpu_machine():
    """Real, not mocked: this machine has no CUDA, so a reserved GPU is the clean error, and no GPU is CPU."""
    assert actor_device(0, "reward.num_gpus") == "cpu"
    with pytest.raises(AlignrayError, match=r"^rollout.num_gpus=0.25: this rollout worker has no CUDA"):
        actor_device(0.25, "rollout.num_gpus")


def test_resolve_device_of_a_command():
    assert resolve_device("auto", False) == "cpu"
    assert resolve_device("auto", True) == "cuda:0"
    assert resolve_device("cpu", True) == "cpu"
    assert resolve_device("cuda", True) == "cuda:0" and resolve_device("cuda:1", True) == "cuda:1"
    with pytest.raises(AlignrayError, match=r"--device cuda: this machine has no CUDA device"):
        resolve_device("cuda", False)
    with pytest.raises(AlignrayError, match="choose auto, cpu, cuda or cuda:N"):
        resolve_device("tpu", True)


def test_rm_eval_takes_a_device_flag_defaulting_to_auto():
    parser = build_parser()
    assert parser.parse_args(["rm", "eval", "--model", "m", "--data", "d"]).device == "auto"
    assert parser.parse_args(["rm", "eval", "--model", "m", "--data", "d", "--device", "cpu"]).device == "cpu"


def test_peak_flops_by_device_name_and_dtype():
    assert peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "float16") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 19.5e12
    assert peak_flops(None, "bfloat16") is None  # CPU
    assert peak_flops("NVIDIA GeForce GTX 1080", "float32") is None  # unknown: no MFU


def test_mfu_formula():
    # 6 · 206e6 params · 55e3 tokens / 2.1 s / 989e12 = 6.798e16 / 2.0769e15 ≈ 0.0327 (the issue's ≈ 3 %)
    assert mfu(206e6, 55e3, 2.1, 989e12) == pytest.approx(0.03273, abs=1e-5)
    # two devices: half of it
    assert mfu(206e6, 55e3, 2.1, 989e12, devices=2) == pytest.approx(0.03273 / 2, abs=1e-5)
    # 6 · 1e9 · 1e4 / 1 / 1e15 = 0.06
    assert mfu(1e9, 1e4, 1.0, 1e15) == pytest.approx(0.06)
    assert mfu(1e9, 1e4, 0.0, 1e15) == 0.0 and mfu(1e9, 1e4, 1.0, 0.0) == 0.0
    # LoRA: 1e7 trainable of 1e9: (4 · 1e9 + 2 · 1e7) · 1e4 / 1 / 1e15 = 0.0402 (not 0.06: no weight gradients
    # for the frozen base)
    assert mfu(1e9, 1e4, 1.0, 1e15, trainable=1e7) == pytest.approx(0.0402)
    assert mfu(1e9, 1e4, 1.0, 1e15, trainable=1e9) == pytest.approx(0.06)


def test_a_cpu_rank_takes_an_empty_ds_accelerator_as_unset(monkeypatch):
    """DeepSpeed refuses DS_ACCELERATOR="" with a traceback; a CPU rank sets "cpu" then, and keeps a user's
    value."""
    import os

    from alignray.actors.ranks import prepare_rank

    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("DS_ACCELERATOR", "")
        assert prepare_rank(threads, 0.0) is False
        assert os.environ["DS_ACCELERATOR"] == "cpu"
        monkeypatch.setenv("DS_ACCELERATOR", "xpu")
        prepare_rank(threads, 0.0)
        assert os.environ["DS_ACCELERATOR"] == "xpu"
    finally:
        torch.set_num_threads(threads)
