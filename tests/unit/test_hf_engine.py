"""The transformers engine: n samples per prompt, stop handling, and log-probs that match a plain forward
pass."""

from __future__ import annotations

import numpy as np
import pytest

from alignray.config_sections import ModelConfig
from alignray.models import load_policy
from alignray.rollout.engine import SamplingSettings
from alignray.rollout.hf import HFEngine
from alignray.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def engine():
    tok = build_byte_tokenizer()
    return HFEngine(load_policy(ModelConfig(), len(tok)), tok.pad_token_id, tok.eos_token_id)


def test_generate_groups_and_logprobs_match_forward(engine):
    prompts = [np.array([40, 41, 42], np.int32), np.array([50], np.int32)]
    out = engine.generate(prompts, SamplingSettings(max_new_tokens=6, temperature=0.7, n=3, seed=1))
    assert [len(g) for g in out] == [3, 3]
    for prompt, group in zip(prompts, out, strict=True):
        for c in group:
            assert 1 <= len(c.tokens) <= 6 and len(c.logprobs) == len(c.tokens)
            assert c.finish_reason == ("stop" if c.tokens[-1] == 2 else "length")
            again = engine.logprobs([prompt], [c.tokens], temperature=0.7)[0]
            np.testing.assert_allclose(c.logprobs, again, atol=1e-4)  # left padding does not change log-probs


def test_stop_tokens_end_generation(engine):
    vocab = np.arange(3, 259, dtype=np.int32)
    out = engine.generate([np.array([60], np.int32)],
                          SamplingSettings(max_new_tokens=40, n=4, stop_token_ids=tuple(vocab.tolist()),
                                           seed=0))
    assert all(len(c.tokens) == 1 and c.finish_reason == "stop" for c in out[0])


def test_same_seed_same_samples(engine):
    s = SamplingSettings(max_new_tokens=5, n=2, seed=123)
    a = engine.generate([np.array([70, 71], np.int32)], s)
    b = engine.generate([np.array([70, 71], np.int32)], s)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a[0], b[0], strict=True))
