"""Packed micro-batches (`learner.packing`): the layout by hand, the same log-probs, entropies, values and
gradients as padded rows (tiny Llama, sdpa and eager), and micro-batches chosen by tokens."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest
import torch

from alignray.config_sections import ModelConfig
from alignray.errors import AlignrayError
from alignray.learner.batch import forward_logprobs, response_values, sequences_from_batch
from alignray.learner.packing import (
    Packing,
    auto_row_tokens,
    block_causal_mask,
    pack_rows,
    positions,
    row_layout,
    token_chunks,
    unpack,
)
from alignray.learner.train_step import group_order, plan_step
from alignray.models import load_critic, load_policy, tiny_config
from alignray.schema import SCHEMAS, list_array

VOCAB = 40
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "max_position_embeddings": 64}


def test_positions_restart_per_sequence():
    assert positions(torch.tensor([2, 3, 1])).tolist() == [0, 1, 0, 1, 2, 0]


def test_block_causal_mask_by_hand():
    mask = block_causal_mask(torch.tensor([[0, 0, 1], [0, -1, -1]]), torch.float32)
    low = torch.finfo(torch.float32).min
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].tolist() == [[0, low, low], [0, 0, low], [low, low, 0]]
    assert mask[1, 0].tolist() == [[0, low, low], [low, 0, low], [low, 0, 0]]  # a padding tail: by itself


def test_auto_row_bound_follows_the_hidden_size():
    assert auto_row_tokens(128) == 256 and auto_row_tokens(1024) == 1024 and auto_row_tokens(4096) == 4096


def test_row_layout_by_hand():
    rows, starts, width = row_layout(np.array([3, 4, 2]), 7)
    assert rows.tolist() == [0, 0, 1] and starts.tolist() == [0, 3, 0] and width == 7
    rows, starts, width = row_layout(np.array([3, 4, 2]), None)
    assert rows.tolist() == [0, 0, 0] and starts.tolist() == [0, 3, 7] and width == 9


def test_pack_rows_by_hand():
    """prompts [2, 1] + responses [1, 1] (lengths 3, 2): one row [7 8 9 | 4 5]; response token 0 of
    sequence 0 is predicted at column 0 + 2 − 1 = 1, of sequence 1 at 3 + 1 − 1 = 3."""
    ids = torch.tensor([[7, 8, 9, 0], [4, 5, 0, 0]])
    att = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    prompts, responses = torch.tensor([2, 1]), torch.tensor([1, 1])
    one = pack_rows(ids, att, prompts, responses, 1, Packing("sdpa"), torch.float32)
    assert one.input_ids.tolist() == [[7, 8, 9, 4, 5]] and one.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert one.row.tolist() == [0, 0] and one.column.tolist() == [1, 3]
    assert one.attention_mask.shape == (1, 1, 5, 5) and one.token_mask.tolist() == [[True], [True]]
    # rows of at most 3 tokens: [7 8 9] and [4 5 pad]; the padding tail counts its positions from 0
    two = pack_rows(ids, att, prompts, responses, 1, Packing("eager", row_tokens=3), torch.float32)
    assert two.input_ids.tolist() == [[7, 8, 9], [4, 5, 0]] and two.position_ids.tolist() == [[0, 1, 2],
                                                                                               [0, 1, 0]]
    assert two.row.tolist() == [0, 1] and two.column.tolist() == [1, 0]
    # flash-attention: no mask and one row whatever the bound; transformers reads the boundaries from
    # position_ids (its varlen path)
    flash = pack_rows(ids, att, prompts, responses, 1, Packing("flash_attention_2", 3), torch.bfloat16)
    assert flash.attention_mask is None and flash.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert unpack(torch.tensor([5.0, 6.0]), one.token_mask).tolist() == [[5], [6]]


def ragged_batch(seed: int = 0) -> pa.RecordBatch:
    """4 prompt groups, ragged prompts (2-9 tokens) and responses (1-12 tokens): padding is most of [B, L]."""
    rng = np.random.default_rng(seed)
    sizes = [3, 2, 4, 2]
    pid = np.repeat(np.arange(len(sizes)) * 5 + 1, sizes)
    prompts = {p: rng.integers(3, VOCAB, rng.integers(2, 10)) for p in set(pid.tolist())}
    responses = [rng.integers(3, VOCAB, rng.integers(1, 13)) for _ in pid]
    n = len(pid)
    cols = [pa.array(pid, pa.int64()), pa.array([""] * n), list_array([prompts[p] for p in pid], pa.int32()),
            pa.array(np.concatenate([np.arange(s) for s in sizes]), pa.int32()), pa.array([""] * n),
            list_array(responses, pa.int32()),
            list_array([-rng.uniform(2, 4, len(r)) for r in responses], pa.float32()),
            pa.array(np.zeros(n), pa.int64()), pa.array(["stop"] * n),
            pa.array(rng.normal(size=n), pa.float32())]
    return pa.RecordBatch.from_arrays(cols, schema=SCHEMAS["scored"])


def rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    g, w = torch.cat([x.flatten() for x in got]), torch.cat([x.flatten() for x in want])
    return float((g - w).norm() / w.norm())


@pytest.mark.parametrize("attn, row_tokens", [("sdpa", None), ("sdpa", 24), ("eager", None), ("eager", 24)])
def test_packed_and_padded_give_the_same_gradient(attn, row_tokens):
    """A tiny Llama (alignray.models.tiny_config): the loss Σ w·log π + 0.1·Σ entropy over the response tokens
    of a ragged micro-batch, padded and packed (one row, or rows of ≤ 24 tokens): log-probs, entropies and
    every parameter's gradient agree to 1e-5."""
    cfg = ModelConfig(attn_implementation=attn, tiny=TINY)
    model = load_policy(cfg, VOCAB)
    assert tiny_config(cfg, VOCAB).num_hidden_layers == 2 and model.config._attn_implementation == attn
    seq = sequences_from_batch(ragged_batch(), 0)
    weights = torch.randn(seq.response_mask.shape, generator=torch.Generator().manual_seed(3))
    results = {}
    for layout in ("padded", "packed"):
        logp, ent = forward_logprobs(model, seq, 0.9, entropy=True, entropy_grad=True,
                                     packing=Packing(attn, row_tokens) if layout == "packed" else None)
        loss = (weights * logp).sum() + 0.1 * ent.sum()
        results[layout] = (logp.detach(), ent.detach(), torch.autograd.grad(loss, list(model.parameters())))
    (lp_a, ent_a, grad_a), (lp_b, ent_b, grad_b) = results["padded"], results["packed"]
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_b, ent_a, atol=1e-5, rtol=0)
    assert (lp_b[seq.response_mask == 0] == 0).all()
    assert rel_err(grad_b, grad_a) <= 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(grad_a, grad_b, strict=True)) <= 1e-5


def test_packed_critic_values_and_their_gradient_match_padded():
    cfg = ModelConfig(tiny=TINY)
    critic = load_critic(cfg, VOCAB)
    seq = sequences_from_batch(ragged_batch(1), 0)
    grads = []
    for packing in (None, Packing("sdpa"), Packing("sdpa", 20)):
        values = response_values(critic, seq, packing)
        grads.append((values.detach(), torch.autograd.grad(values.square().sum(), list(critic.parameters()))))
    for values, grad in grads[1:]:
        torch.testing.assert_close(values, grads[0][0], atol=1e-5, rtol=0)
        assert rel_err(grad, grads[0][1]) <= 1e-5


def test_a_masked_dummy_row_still_reaches_every_parameter():
    """An empty micro-batch runs one row with its response mask zeroed (ZeRO ranks stay in step): packed, it
    still has a graph through the model, and contributes zero."""
    model = load_policy(ModelConfig(tiny=TINY), VOCAB)
    seq = sequences_from_batch(ragged_batch(), 0).select(torch.tensor([0]))
    seq.response_mask = torch.zeros_like(seq.response_mask)
    logp, _ = forward_logprobs(model, seq, 1.0, packing=Packing("sdpa"))
    assert logp.requires_grad and float(logp.detach().abs().sum()) == 0.0


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attention_without_its_package_is_one_line_naming_the_field():
    with pytest.raises(AlignrayError, match=r"^model.attn_implementation=flash_attention_2: .*try sdpa"):
        load_policy(ModelConfig(attn_implementation="flash_attention_2", tiny=TINY), VOCAB)


def test_token_chunks_by_hand():
    chunks = token_chunks(np.array([3, 4, 2, 6, 1]), 7)
    assert [c.tolist() for c in chunks] == [[0, 1], [2], [3, 4]]
    assert [c.tolist() for c in token_chunks(np.array([9, 2]), 7)] == [[0], [1]]  # too long: on its own
    assert token_chunks(np.array([], dtype=np.int64), 7) == []


@pytest.mark.parametrize("world, mini_batches", [(1, 1), (2, 1), (3, 2)])
def test_plan_by_tokens_is_one_plan_on_every_rank(world, mini_batches):
    """Every rank plans every shard: per mini-batch the same micro-batch count on each rank, each row exactly
    once, a prompt group on one rank only, and no micro-batch over budget unless it is a single row."""
    batch = ragged_batch(2)
    pid = batch.column("prompt_id").to_numpy()
    lengths = sum(np.diff(np.asarray(batch.column(c).offsets)) for c in ("prompt_tokens", "response_tokens"))
    budget = 30
    plans = [plan_step(pid, r, world, mini_batches, 10**6, lengths, budget) for r in range(world)]
    group, _ = group_order(pid)
    seen = []
    for k in range(len(plans[0])):
        assert len({len(plan[k]) for plan in plans}) == 1  # ZeRO collectives: equal call counts
        for rank, plan in enumerate(plans):
            for micro in plan[k]:
                assert len(micro) <= 1 or lengths[micro].sum() <= budget
                seen += [(int(i), rank) for i in micro]
    assert sorted(i for i, _ in seen) == list(range(len(pid)))
    rank_of_group: dict[int, int] = {}
    for i, rank in seen:
        assert rank_of_group.setdefault(int(group[i]), rank) == rank
