"""The HF engine's lean sampling loop: the same model, the same log-probs, the same distribution as
`generate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alignray.config_sections import ModelConfig, TinyModelConfig
from alignray.models import load_policy
from alignray.rollout.engine import SamplingSettings
from alignray.rollout.hf import HFEngine
from alignray.rollout.lean_decode import LeanDecoder, supports
from alignray.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module", params=[2, 1], ids=["mha", "gqa"])
def model(request):
    tok = build_byte_tokenizer()
    tiny = TinyModelConfig(num_attention_heads=2)
    m = load_policy(ModelConfig(tiny=tiny), len(tok))
    if request.param == 1:  # grouped-query attention: one key/value head for two query heads
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(**{**m.config.to_dict(), "num_key_value_heads": 1})
        torch.manual_seed(0)
        m = LlamaForCausalLM(cfg)
    return m.eval()


def test_lean_loop_is_used_for_llama(model):
    assert supports(model)
    assert HFEngine(model, 0, 2).lean is not None and HFEngine(model, 0, 2, lean=False).lean is None


def test_logprobs_match_a_plain_forward(model):
    """Ragged prompts (left padding), several samples each, a stop token: every sampled token's log-prob
    equals the one a full forward pass of prompt + response gives (the number the learner recomputes)."""
    engine = HFEngine(model, 0, 2)
    prompts = [np.array([40, 41, 42, 43, 44], np.int32), np.array([50], np.int32), np.array([60, 61],
                                                                                            np.int32)]
    out = engine.generate(prompts, SamplingSettings(max_new_tokens=12, temperature=0.8, n=3, seed=4))
    for prompt, group in zip(prompts, out, strict=True):
        assert len(group) == 3
        for c in group:
            assert 1 <= len(c.tokens) <= 12 and len(c.logprobs) == len(c.tokens)
            again = engine.logprobs([prompt], [c.tokens], temperature=0.8)[0]
            np.testing.assert_allclose(c.logprobs, again, atol=1e-5)


def test_prefill_logprobs_match_the_model(model):
    """The first token's log-prob (16 samples per prompt, so many different tokens) against the model's own
    forward."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    reference = model(input_ids=ids, attention_mask=mask).logits[:, -1].repeat_interleave(16, 0)
    dec = LeanDecoder(model)
    torch.manual_seed(0)
    tokens, logprobs = dec.sample(ids, mask, n=16, max_new_tokens=1, temperature=1.0, top_p=1.0, stop_ids={2},
                                  pad_id=0)
    assert len(set(tokens[:, 0].tolist())) > 4
    expected = torch.log_softmax(reference, -1).gather(-1, tokens[:, :1]).squeeze(-1)
    torch.testing.assert_close(logprobs[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_same_distribution_as_generate(model):
    """First-token frequencies over many samples agree with `generate`'s (same softmax(z/T), same top-p
    filter)."""
    prompt = [np.array([70, 71, 72], np.int32)]
    s = SamplingSettings(max_new_tokens=1, temperature=1.5, top_p=0.9, n=3000, seed=7)
    counts = []
    for lean in (True, False):
        out = HFEngine(model, 0, 2, lean=lean).generate(prompt, s)[0]
        counts.append(np.bincount([int(c.tokens[0]) for c in out],
                                  minlength=model.config.vocab_size) / len(out))
    # total variation × 2, sampling noise of 3000 draws each
    assert np.abs(counts[0] - counts[1]).sum() < 0.25


def test_finished_rows_stop_and_pad():
    tok = build_byte_tokenizer()
    engine = HFEngine(load_policy(ModelConfig(), len(tok)), tok.pad_token_id, tok.eos_token_id)
    vocab = tuple(range(3, 259))
    out = engine.generate([np.array([60], np.int32), np.array([61, 62], np.int32)],
                          SamplingSettings(max_new_tokens=40, n=2, stop_token_ids=vocab, seed=0))
    assert all(len(c.tokens) == 1 and c.finish_reason == "stop" for g in out for c in g)
