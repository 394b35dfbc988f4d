"""Weight buckets: many tensors per message, exact round trip, aligned views, and in-place loading into an
engine."""

from __future__ import annotations

import torch

from alignray.config_sections import ModelConfig
from alignray.models import load_policy
from alignray.rollout.hf import HFEngine
from alignray.rollout.weights import group_into_buckets, pack_bucket, pack_state, unpack_bucket
from alignray.tokenizer import build_byte_tokenizer


def test_grouping_respects_bucket_size_and_order():
    named = [(f"t{i}", torch.zeros(256)) for i in range(10)]  # 1 KiB each
    groups = list(group_into_buckets(named, bucket_bytes=3 * 1024))
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert [n for g in groups for n, _ in g] == [n for n, _ in named]
    big = list(group_into_buckets([("big", torch.zeros(10_000))], bucket_bytes=1024))
    assert len(big) == 1  # a tensor larger than a bucket travels alone


def test_pack_unpack_round_trip_mixed_dtypes():
    named = [("a", torch.randn(3, 5)), ("b", torch.arange(7, dtype=torch.int64)),
             ("c", torch.randn(4, dtype=torch.float64)), ("d", torch.randn(2, 3).to(torch.bfloat16))]
    bucket = pack_bucket(named)
    assert all(spec.offset % 64 == 0 for spec in bucket.specs)
    out = dict(unpack_bucket(bucket))
    for name, tensor in named:
        assert out[name].dtype == tensor.dtype and torch.equal(out[name], tensor)


def test_engine_loads_buckets_in_place():
    tok = build_byte_tokenizer()
    source = load_policy(ModelConfig(seed=1), len(tok))
    target = load_policy(ModelConfig(seed=2), len(tok))
    engine = HFEngine(target, tok.pad_token_id, tok.eos_token_id)
    before = {n: p.data_ptr() for n, p in target.named_parameters()}
    buckets = pack_state(source.named_parameters(), bucket_mb=0.5)
    assert 1 < len(buckets) < len(list(source.parameters()))  # grouped, not one per tensor
    loaded = sum(engine.load_weights(unpack_bucket(b)) for b in buckets)
    assert loaded == len(list(source.parameters()))
    for (name, p), (_, q) in zip(source.named_parameters(), target.named_parameters(), strict=True):
        assert torch.equal(p, q) and q.data_ptr() == before[name]  # same storage: updated in place
