"""Overlong shaping (algo.overlong) against hand-computed numbers: DAPO's soft penalty, the penalty in the
rewards and the advantages, and the filter's exactness — a masked-out answer counts in no normaliser, at any
sharding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import close, tiny_overrides

from alignray.algorithms.advantages import compute_advantages
from alignray.algorithms.overlong import overlong_penalty, truncated_rows
from alignray.config import load_config
from alignray.config_sections import AlgoConfig, OverlongConfig
from alignray.errors import ConfigError
from alignray.learner.batch import sequences_from_batch
from alignray.learner.objective import Objective, Tally, aggregate_sum, batch_counts, normaliser
from alignray.rollout.engine import Completion, build_rollout_batch
from alignray.schema import list_array


def test_soft_penalty_by_hand():
    # L_max 32, L_cache 8: free up to 24 tokens, then (24 − |y|) / 8 down to −1 at 32, −1 beyond
    lengths = torch.tensor([0, 24, 25, 28, 31, 32, 33])
    close(overlong_penalty(lengths, 32, 8), [0, 0, -0.125, -0.5, -0.875, -1, -1])
    # L_cache = L_max: every token costs 1/L_max
    close(overlong_penalty(torch.tensor([0, 1, 3, 4]), 4, 4), [0, -0.25, -0.75, -1])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 32, 0)


def scored(lengths: list[int], reasons: list[str], rewards: list[float], prompt_ids: list[int]
           ) -> pa.RecordBatch:
    """One sample per prompt row (so `prompt_ids` may repeat to form groups), response tokens 1…n."""
    prompts = pa.record_batch({"prompt_id": pa.array(prompt_ids, pa.int64()),
                               "prompt": ["p"] * len(prompt_ids),
                               "prompt_tokens": list_array([[7, 8]] * len(prompt_ids), pa.int32())})
    comps = [[Completion(np.arange(1, n + 1, dtype=np.int32), np.zeros(n, np.float32), why)]
             for n, why in zip(lengths, reasons, strict=True)]
    batch = build_rollout_batch(prompts, comps, 0, lambda tok: "")
    return batch.append_column("reward", pa.array(rewards, pa.float32()))


def test_truncated_rows_read_the_finish_reason():
    batch = scored([4, 2, 4], ["length", "stop", "stop"], [0, 0, 0], [1, 2, 3])
    assert truncated_rows(batch).tolist() == [True, False, False]  # a stop at the budget is not cut


def test_penalty_enters_the_rewards_and_the_group_advantages():
    # one group of 2 with scorer reward 1 each: 10 tokens (free) and 32 (cut: −1) → rewards 1 and 0
    batch = scored([10, 32], ["stop", "length"], [1.0, 1.0], [5, 5])
    seq = sequences_from_batch(batch, 0, OverlongConfig(mode="penalty", buffer=8), max_new_tokens=32)
    close(seq.rewards, [1.0, 0.0])
    close(seq.loss_rows, [1, 1])  # the penalty masks nothing
    adv, _ = compute_advantages("grpo", seq.rewards, seq.group_ids, seq.response_mask)
    # mean 0.5, unbiased std √0.5: ±0.5 / 0.70711 = ±0.70711 on every token of each answer
    close(adv[:, 0], [0.707106, -0.707106])
    # without shaping the group carries no signal
    plain = sequences_from_batch(batch, 0)
    close(compute_advantages("grpo", plain.rewards, plain.group_ids, plain.response_mask)[0][:, 0], [0, 0])


def test_filter_masks_the_truncated_answer_out_of_every_count():
    batch = scored([3, 4, 0], ["stop", "length", "stop"], [0.0, 1.0, 2.0], [1, 1, 2])
    seq = sequences_from_batch(batch, 0, OverlongConfig(mode="filter"), max_new_tokens=4)
    close(seq.loss_rows, [1, 0, 1])
    close(seq.response_mask, [[1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    close(seq.rewards, [0, 1, 2])  # its reward still counts in its group's baseline
    counts = batch_counts(seq.response_mask, seq.loss_rows)
    # 3 tokens, 1 row with tokens, 2 rows in the loss (row 2 is an empty answer: a row, not filtered)
    close(counts, [3, 1, 2])
    assert normaliser("seq_mean_token_sum_norm", counts, 4) == 8  # 2 rows × 4, not 3 × 4
    close(batch_counts(seq.response_mask), [3, 1, 3])  # without loss_rows: every row counts


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_filtered_loss_is_the_loss_without_the_truncated_rows_at_any_sharding(mode):
    torch.manual_seed(0)
    lengths, reasons = [3, 4, 2, 4, 1], ["stop", "length", "stop", "length", "stop"]
    batch = scored(lengths, reasons, [0.0, 1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2, 3])
    seq = sequences_from_batch(batch, 0, OverlongConfig(mode="filter"), max_new_tokens=4)
    kept = sequences_from_batch(batch.filter(pa.array([r == "stop" for r in reasons])), 0)
    obj = Objective(AlgoConfig(loss_agg=mode), temperature=1.0, norm_len=4)
    logp, adv = torch.randn(5, 4), torch.randn(5, 4)
    keep = torch.tensor([0, 2, 4])

    def loss(rows: torch.Tensor, s, counts) -> torch.Tensor:  # masks padded to the full batch's 4 columns
        mask = torch.nn.functional.pad(s.response_mask, (0, 4 - s.response_mask.shape[1]))
        return obj.policy_loss(logp[rows], None, None, None, torch.zeros(len(rows), 4), adv[rows], mask,
                               counts, Tally())

    everything = torch.arange(5)
    whole = loss(everything, seq, batch_counts(seq.response_mask, seq.loss_rows))
    without = loss(keep, kept, batch_counts(kept.response_mask, kept.loss_rows))
    close(whole, float(without), atol=1e-6)
    # rows {0, 1, 4} on one rank, {2, 3} on the other: shard losses over the global counts sum to it
    parts = [torch.tensor([0, 1, 4]), torch.tensor([2, 3])]
    counts = sum(batch_counts(seq.response_mask[p], seq.loss_rows[p]) for p in parts)
    sharded = sum(loss(p, seq.select(p), counts) for p in parts)
    close(sharded, float(without), atol=1e-6)
    assert float(aggregate_sum(adv, seq.response_mask, mode)) != 0.0  # the kept rows do carry a loss


def test_config_validation_names_the_field():
    def error(**overrides) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(None, tiny_overrides(**overrides))
        return str(info.value)

    assert "algo.overlong.buffer must be 1 … rollout.max_new_tokens (8)" in error(**{"algo.overlong.mode":
                                                                                      "penalty"})
    assert "(got 9)" in error(**{"algo.overlong.mode": "penalty", "algo.overlong.buffer": 9})
    assert "algo.overlong.mode" in error(**{"algo.overlong.mode": "cut"})
    assert "algo.dynamic_sampling needs a group-based algo.name" in error(**{"algo.dynamic_sampling": True,
                                                                             "algo.name": "ppo"})
    assert "algo.dynamic_sampling_max_rounds" in error(**{"algo.dynamic_sampling_max_rounds": 0})
    cfg = load_config(None, tiny_overrides(**{"algo.overlong.mode": "penalty", "algo.overlong.buffer": 8}))
    assert cfg.algo.overlong == OverlongConfig(mode="penalty", buffer=8)
    assert load_config(None, tiny_overrides()).algo.overlong.mode == "none"
