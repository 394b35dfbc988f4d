"""LoRA runs for real (`model.lora.r=8`): 2 DeepSpeed ranks on gloo train the adapters only, the rollout
engine samples with the merged weights, the reference is the base with the adapters off, checkpoints hold the
adapters and an HF export of the merged model, and a resumed run repeats the uninterrupted one (ZeRO-2);
ZeRO-0 in the colocated layout runs too. vLLM sampling the merged weights: a LoRA run in
tests/e2e/test_vllm_engine.py::test_training_run_on_vllm_advances_versions. Merging, the optimizer's
parameters and the reference by hand: tests/unit/test_lora.py."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from alignray.config import load_config
from alignray.driver.controller import Controller
from alignray.driver.runlog import read_metrics

pytestmark = pytest.mark.slow

LORA = {"model.lora.r": 8, "learner.lr": 0.002, "algo.log_kl": True}


def run(run_dir, resume=False, **overrides):
    cfg = load_config(run_dir / "config.yaml" if resume else None, tiny_overrides(**overrides))
    controller = Controller(cfg, run_dir, resume=resume)
    try:
        return controller.run()
    finally:
        controller.close()


@pytest.fixture(scope="module")
def four_steps(ray_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    history = run(run_dir, **LORA, **{"train.steps": 4, "train.save_interval": 2, "learner.zero_stage": 2})
    return run_dir, history


def base_state() -> dict[str, torch.Tensor]:
    """The frozen base: the quickstart's tiny policy as every run builds it."""
    from alignray.models import load_policy

    return load_policy(load_config(None, tiny_overrides()).model).state_dict()


def test_lora_trains_the_adapters_and_the_engine_samples_the_merged_model(four_steps):
    run_dir, history = four_steps
    for m in history:
        assert m["learner/trainable_params"] < 0.1 * m["learner/total_params"]
        # the engine's log-probs are the learner's: it holds the merged weights of the version it sampled
        assert m["learner/logprob_mismatch"] < 1e-5
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the adapters' B starts at 0: the base
    assert all(m["kl"] > 1e-5 for m in history[1:])  # the reference stays the base while the adapters move
    step = run_dir / "checkpoints" / "step_4"
    module = torch.load(step / "policy" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert module and all(".lora_A." in k or ".lora_B." in k for k in module)  # the adapters, not the base
    assert (step / "adapter" / "adapter_config.json").is_file()
    assert (step / "adapter" / "adapter_model.safetensors").is_file()


def test_the_hf_export_is_the_merged_model(four_steps):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignray.models import load_policy

    run_dir, _ = four_steps
    step = run_dir / "checkpoints" / "step_4"
    merged = dict(AutoModelForCausalLM.from_pretrained(step / "hf").named_parameters())
    base = base_state()
    assert set(merged) == set(base)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # frozen
    assert not torch.equal(merged["lm_head.weight"], base["lm_head.weight"])  # adapted
    cfg = load_config(run_dir / "config.yaml")
    again = PeftModel.from_pretrained(load_policy(cfg.model), step / "adapter").merge_and_unload()
    for name, p in again.named_parameters():
        torch.testing.assert_close(merged[name], p, atol=1e-6, rtol=0)


def test_a_lora_run_resumes_exactly(four_steps, tmp_path):
    """Resume from step 2 (adapters, their optimizer state, data position, seeds): steps 3-4 and the final
    merged weights match the uninterrupted run."""
    run_dir, history = four_steps
    copy = tmp_path / "resumed"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step_4")
    resumed = run(copy, resume=True, **{"train.steps": 4, "train.save_interval": 2})
    assert [m["step"] for m in resumed] == [3, 4]
    assert [m["step"] for m in read_metrics(copy)] == [1, 2, 3, 4]
    for a, b in zip(history[2:], resumed, strict=True):
        assert b["reward/mean"] == pytest.approx(a["reward/mean"], abs=1e-6)
        assert b["loss/policy"] == pytest.approx(a["loss/policy"], abs=1e-4)
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-6)
    want = load_file(run_dir / "checkpoints" / "step_4" / "hf" / "model.safetensors")
    got = load_file(copy / "checkpoints" / "step_4" / "hf" / "model.safetensors")
    assert set(got) == set(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 1e-6


def test_lora_under_zero0_and_colocated(ray_cluster, tmp_path):
    """ZeRO-0 in the colocated layout (the other runs here: ZeRO-2 with rollout workers)."""
    history = run(tmp_path / "run", **LORA, **{"learner.zero_stage": 0, "train.colocate": True,
                                               "train.steps": 2})
    assert [m["step"] for m in history] == [1, 2]
    assert history[-1]["learner/trainable_params"] < 0.1 * history[-1]["learner/total_params"]
    assert history[-1]["kl"] > 1e-5 and history[-1]["learner/logprob_mismatch"] < 1e-5
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "hf" / "model.safetensors").is_file()
