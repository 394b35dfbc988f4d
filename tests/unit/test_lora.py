"""LoRA (`model.lora`, alignray.lora) on a tiny Llama (alignray.models.tiny_config): the merged weights the
engines receive equal peft's `merge_and_unload`, the optimizer holds only the adapters, the reference is the
base with the adapters off, the exports load, and bad settings are one line naming the field."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_packing import TINY, VOCAB, ragged_batch
from transformers import AutoModelForCausalLM

from alignray.config import Config, apply_overrides, load_config
from alignray.config_sections import LoraConfig, ModelConfig
from alignray.errors import AlignrayError, ConfigError
from alignray.learner.batch import forward_logprobs, sequences_from_batch
from alignray.learner.packing import Packing
from alignray.lora import (
    Reference,
    adapter_state,
    apply_lora,
    is_adapter,
    lora_targets,
    merged_state,
    param_counts,
    target_modules,
)
from alignray.models import load_policy, load_tokenizer, optimizer_for, save_hf, tiny_config
from alignray.rollout.engine import SamplingSettings
from alignray.rollout.hf import HFEngine
from alignray.rollout.weights import pack_state, unpack_bucket

LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def lora_policy(targets="all", r: int = 4, alpha: float = 8.0):
    """(base config, PeftModel, the injected model) with random B matrices (peft starts B at 0: the merge
    would be the base and prove nothing)."""
    cfg = ModelConfig(tiny=TINY, lora=LoraConfig(r=r, alpha=alpha, target_modules=targets))
    model = load_policy(cfg, VOCAB)
    peft = apply_lora(model, cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return cfg, peft, model


def live_state(model) -> dict[str, torch.Tensor]:
    """What the learner hands to `merged_state`: its parameters, detached, not copied."""
    return {n: p.detach() for n, p in model.named_parameters()}


def ids(rows: int = 3, width: int = 11) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, width), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("targets", ["all", "all-linear", ["q_proj", "v_proj"]])
def test_merged_weights_equal_merge_and_unload_and_leave_the_module_alone(targets):
    _, peft, model = lora_policy(targets)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = merged_state(live_state(model), lora_targets(model))
    want = dict(copy.deepcopy(peft).merge_and_unload().named_parameters())
    assert set(merged) == set(want)  # the base model's names, every tensor
    assert max(float((merged[k] - want[k]).abs().max()) for k in want) <= 1e-6
    changed = [k for k in want if not torch.equal(want[k], before.get(k, before.get(
        k.replace(".weight", ".base_layer.weight"))))]
    assert changed  # the adapters moved some weights…
    for name, p in model.named_parameters():  # …without writing into the training module
        assert torch.equal(p.detach(), before[name]), name


def test_the_engines_load_the_merged_weights_from_buckets():
    """The path of a weight update: merged state → buckets → an HF engine of the base model by name."""
    cfg, peft, model = lora_policy()
    buckets = pack_state(merged_state(live_state(model), lora_targets(model)).items(), bucket_mb=0.05)
    assert len(buckets) > 1
    engine = HFEngine(load_policy(cfg, VOCAB), 0, 2)
    loaded = sum(engine.load_weights(unpack_bucket(b)) for b in buckets)
    assert loaded == len(engine.params)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(engine.model(x).logits, peft(input_ids=x).logits, atol=1e-5, rtol=0)


def test_only_the_adapters_train_and_are_in_the_optimizer():
    _, _, model = lora_policy()
    optim = optimizer_for(model, 1e-3, 0.0)
    in_optim = {id(p) for group in optim.param_groups for p in group["params"]}
    adapters = {id(p) for n, p in model.named_parameters() if is_adapter(n)}
    assert in_optim == adapters
    assert all(p.requires_grad == is_adapter(n) for n, p in model.named_parameters())
    trainable, total = param_counts(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if is_adapter(n))
    assert total == sum(p.numel() for p in model.parameters()) and 0 < trainable < total
    full = load_policy(ModelConfig(tiny=TINY), VOCAB)  # full fine-tuning: every parameter
    assert sum(len(g["params"]) for g in optimizer_for(full, 1e-3, 0.0).param_groups) == len(list(
        full.parameters()))


def test_the_reference_is_the_base_with_the_adapters_off():
    cfg, peft, model = lora_policy()
    base = load_policy(ModelConfig(tiny=TINY), VOCAB)  # the same seeded base, without adapters
    reference = Reference(peft, model)
    x = ids()
    with torch.no_grad():
        adapted = model(input_ids=x).logits
        torch.testing.assert_close(reference(input_ids=x).logits, base(input_ids=x).logits, atol=1e-6,
                                   rtol=0)
        assert float((adapted - base(input_ids=x).logits).abs().max()) > 1e-2
        torch.testing.assert_close(model(input_ids=x).logits, adapted, atol=0, rtol=0)  # on again after
        # the learner's log-probs, padded and packed
        seq = sequences_from_batch(ragged_batch(), 0)
        for packing in (None, Packing("sdpa")):
            got = forward_logprobs(reference, seq, 0.9, packing=packing)[0]
            torch.testing.assert_close(got, forward_logprobs(base, seq, 0.9, packing=packing)[0], atol=1e-5,
                                       rtol=0)
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())


def test_a_colocated_engine_samples_with_the_adapters():
    """train.colocate: the rank's HF engine (the lean decoder) runs the injected module: its log-probs are the
    merged model's."""
    cfg, _, model = lora_policy()
    engine = HFEngine(model, 0, 2)
    assert engine.lean is not None
    merged = HFEngine(load_policy(ModelConfig(tiny=TINY), VOCAB), 0, 2)
    merged.load_weights(merged_state(live_state(model), lora_targets(model)).items())
    prompts = [np.arange(3, 9, dtype=np.int64), np.arange(5, 8, dtype=np.int64)]
    groups = engine.generate(prompts, SamplingSettings(n=2, max_new_tokens=6, temperature=1.0, top_p=1.0,
                                                       seed=3))
    for prompt, group in zip(prompts, groups, strict=True):
        for c in group:
            again = merged.logprobs([prompt], [c.tokens.astype(np.int64)], 1.0)[0]
            np.testing.assert_allclose(c.logprobs, again, atol=1e-4)


def test_exports_load_with_from_pretrained(tmp_path):
    from peft import PeftModel

    cfg, peft, model = lora_policy()
    tok = load_tokenizer(ModelConfig())
    save_hf(model, tok, tmp_path / "hf", state_dict=merged_state(live_state(model), lora_targets(model)))
    peft.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)  # as the learner saves
    x = ids()
    with torch.no_grad():
        want = peft(input_ids=x).logits
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
        torch.testing.assert_close(hf(input_ids=x).logits, want, atol=1e-5, rtol=0)
        again = PeftModel.from_pretrained(load_policy(ModelConfig(tiny=TINY), VOCAB), tmp_path / "adapter")
        torch.testing.assert_close(again(input_ids=x).logits, want, atol=1e-6, rtol=0)


def test_what_the_adapters_alone_would_move():
    """r · (in + out) per adapted layer against the whole merged model (benchmarks/lora_sync.py measures
    both)."""
    _, _, model = lora_policy(r=2)
    state = live_state(model)
    adapters = sum(t.numel() for t in adapter_state(state).values())
    layers = [model.get_submodule(name).base_layer for name in lora_targets(model)]
    assert len(layers) == 2 * len(LINEARS) + 1  # 2 layers' linears + the LM head
    assert adapters == param_counts(model)[0] == sum(2 * (m.in_features + m.out_features) for m in layers)
    merged = merged_state(state, lora_targets(model))
    assert sum(t.numel() for t in merged.values()) == sum(t.numel() for t in state.values()) - adapters


def test_target_modules_all_includes_an_untied_lm_head_only():
    cfg = ModelConfig(tiny=TINY)
    assert target_modules(load_policy(cfg, VOCAB), "all") == sorted([*LINEARS, "lm_head"])
    config = tiny_config(cfg, VOCAB)
    config.tie_word_embeddings = True
    tied = AutoModelForCausalLM.from_config(config)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert target_modules(tied, "all") == LINEARS
    assert target_modules(tied, "all-linear") == "all-linear"
    with pytest.raises(AlignrayError, match=r"^model.lora.target_modules=.*'lm_head' shares its weight"):
        target_modules(tied, ["q_proj", "lm_head"])
    with pytest.raises(AlignrayError, match=r"^model.lora.target_modules=\['nope'\]: .*not found"):
        apply_lora(load_policy(cfg, VOCAB), ModelConfig(tiny=TINY, lora=LoraConfig(target_modules=["nope"])))


def test_the_adapters_start_the_same_everywhere():
    """Seeded A matrices (every rank, every run); B = 0, so the merged model starts as the base."""
    (_, _, a), (_, _, b) = (apply_lora_fresh() for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    state = live_state(a)
    base = load_policy(ModelConfig(tiny=TINY), VOCAB).state_dict()
    merged = merged_state(state, lora_targets(a))
    assert all(torch.equal(merged[k], base[k]) for k in base)


def apply_lora_fresh():
    cfg = ModelConfig(tiny=TINY, lora=LoraConfig(r=4))
    model = load_policy(cfg, VOCAB)
    return cfg, apply_lora(model, cfg), model


@pytest.mark.parametrize("override, message", [
    ("model.lora.r=0", r"model.lora.r: Input should be greater than or equal to 1"),
    ("model.lora.alpha=0", r"model.lora.alpha: Input should be greater than 0"),
    ("model.lora.dropout=1", r"model.lora.dropout: Input should be less than 1"),
    ("model.lora.target_modules=q_proj", r"model.lora.target_modules: .*'all' or 'all-linear'"),
    ("model.lora.target_modules=[]", r"model.lora.target_modules: .*at least one module name"),
    ("model.lora.rank=8", r"model.lora.rank: unknown field; allowed: r, alpha, dropout, target_modules"),
])
def test_bad_lora_settings_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_lora_needs_zero_at_most_2_and_opens_an_empty_section():
    with pytest.raises(ConfigError, match=r"model.lora needs learner.zero_stage at most 2 \(got 3\)"):
        load_config(None, ["model.lora.r=8", "learner.zero_stage=3"])
    # a resolved config (`alignray config`) writes `lora: null`; an override still opens it
    data = apply_overrides({"model": {"lora": None}}, ["model.lora.r=8"])
    assert Config.model_validate(data).model.lora == LoraConfig(r=8)
    assert load_config(None, []).model.lora is None
