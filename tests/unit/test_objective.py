"""Hand-computed checks of the sharding-invariant objective: global normalisers, global whitening, the step
plan, which forwards a step needs, and the memory-lean log-probs (every expected number is worked out in a
comment)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import close, t
from reference_losses import aggregate

from alignray.algorithms.advantages import whiten, whiten_stats
from alignray.config_sections import AlgoConfig
from alignray.learner.objective import Objective, Tally, aggregate_sum, batch_counts, normaliser
from alignray.learner.train_step import plan_step

X = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_batch_counts_and_normalisers():
    counts = batch_counts(MASK)
    close(counts, [4, 2, 3])  # 4 valid tokens, 2 rows with tokens, 3 rows
    assert normaliser("token_mean", counts, 5) == 4
    assert normaliser("seq_mean_token_mean", counts, 5) == 2
    assert normaliser("seq_mean_token_sum_norm", counts, 5) == 15  # 3 rows × norm_len 5
    assert normaliser("token_mean", batch_counts(torch.zeros(2, 3)), 5) == 1  # empty batch: no division by 0


def test_aggregate_sum_by_hand():
    close(aggregate_sum(X, MASK, "token_mean"), 10.0)  # 1+2+3+4
    close(aggregate_sum(X, MASK, "seq_mean_token_mean"), 6.0)  # 6/3 + 4/1
    close(aggregate_sum(X, MASK, "seq_mean_token_sum_norm"), 10.0)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_shards_with_global_counts_sum_to_the_one_big_batch(mode):
    # rows {0, 2} on one rank, {1} on the other: Σ shard sums / D(global) == aggregate(whole batch)
    counts = batch_counts(MASK[[0, 2]]) + batch_counts(MASK[[1]])
    d = normaliser(mode, counts, 4)
    total = aggregate_sum(X[[0, 2]], MASK[[0, 2]], mode) / d + aggregate_sum(X[[1]], MASK[[1]], mode) / d
    close(total, float(aggregate(X, MASK, mode, norm_len=4)))
    # what a per-shard normaliser gave before: token_mean 0.5·(6/3) + 0.5·(4/1) ≠ 10/4
    if mode == "token_mean":
        assert abs(0.5 * 2.0 + 0.5 * 4.0 - 2.5) > 0.1


def test_global_whitening_equals_whole_batch_whitening():
    x, mask = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), t([[1, 1, 1], [1, 0, 0]])
    stats = whiten_stats(x[:1], mask[:1]) + whiten_stats(x[1:], mask[1:])
    close(stats, [4, 10, 30])  # n, Σx, Σx²
    # the shard [1, 2, 3] whitened with the whole batch's mean 2.5 and var 30/4 − 2.5² = 1.25
    close(whiten(x[:1], mask[:1], reduce=lambda _: stats), [[-1.341641, -0.447214, 0.447214]])
    close(whiten(x, mask)[:1], [[-1.341641, -0.447214, 0.447214]])


def test_objective_policy_loss_on_policy_by_hand():
    obj = Objective(AlgoConfig(loss_agg="token_mean"), temperature=1.0, norm_len=4)
    logp = t([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]]).requires_grad_(True)
    mask, adv = t([[1, 1, 0], [1, 0, 0]]), t([[1.0, 2.0, 0.0], [-0.5, 0.0, 0.0]])
    counts = t([6, 4, 4], torch.float64)  # this micro-batch is part of a 6-token batch
    tally = Tally()
    loss = obj.policy_loss(logp, None, None, None, logp.detach(), adv, mask, counts, tally)
    close(loss, -2.5 / 6)  # ratio 1 (π_old = detached logp): −Σ A / 6 = −(1 + 2 − 0.5)/6
    loss.backward()
    close(logp.grad, [[-1 / 6, -2 / 6, 0.0], [0.5 / 6, 0.0, 0.0]])  # ∂/∂logp of −ratio·A = −A
    ratios = tally.ratios(lambda v: v)
    assert ratios["policy/ratio_mean"] == pytest.approx(1.0) and ratios["policy/clip_frac"] == 0.0
    assert "kl" not in ratios and "entropy" not in ratios


def test_objective_terms_and_forwards():
    def obj(**kw) -> Objective:
        return Objective(AlgoConfig(**kw), 1.0, 8)

    assert not obj().uses_reference  # kl_coef 0: no reference model, no reference forward
    assert obj(log_kl=True).uses_reference and obj(kl_coef=0.1).uses_reference
    assert not obj().needs_old_forward(on_policy=True)  # the detached training forward is π_old
    assert obj().needs_old_forward(on_policy=False)
    assert obj(ppo_epochs=2).needs_old_forward(on_policy=True)
    assert obj(mini_batches=2).needs_old_forward(on_policy=True)
    assert obj(kl_coef=0.1, kl_mode="reward").needs_old_forward(on_policy=True)  # KL enters the advantages
    # the engine's π_old
    assert not obj(old_logprobs="rollout", ppo_epochs=2).needs_old_forward(on_policy=False)
    assert obj(name="ppo").uses_critic and not obj().uses_critic


def test_tally_is_a_ratio_of_global_sums():
    a, b = Tally(), Tally()
    a.add("x", 3.0, 1.0)
    b.add("x", 5.0, 3.0)
    # the "reduce" sums the two ranks' vectors: (3 + 5) / (1 + 3) = 2
    assert a.ratios(lambda v: v + torch.tensor([5.0, 3.0], dtype=torch.float64)) == {"x": 2.0}


def test_plan_keeps_groups_whole_and_micro_batch_counts_equal():
    pid = np.array([7, 7, 3, 3, 3, 9, 5, 5, 1])  # groups in order of first appearance: 7, 3, 9, 5, 1
    plans = [plan_step(pid, r, 2, 1, 2) for r in range(2)]
    rows = [np.concatenate(p[0]) for p in plans]
    assert sorted(np.concatenate(rows).tolist()) == list(range(9))
    assert rows[0].tolist() == [0, 1, 5, 8] and rows[1].tolist() == [2, 3, 4, 6, 7]  # groups 7, 9, 1 | 3, 5
    assert len(plans[0][0]) == len(plans[1][0]) == 3  # ceil(5 / 2) micro-batches on both ranks
    mini = [plan_step(pid, r, 2, 2, 100) for r in range(2)]
    assert len(mini[0]) == 2  # groups {7, 3, 9} then {5, 1}
    assert sorted(np.concatenate([mini[0][0][0], mini[1][0][0]]).tolist()) == [0, 1, 2, 3, 4, 5]
    assert sorted(np.concatenate([mini[0][1][0], mini[1][1][0]]).tolist()) == [6, 7, 8]


def test_forward_logprobs_match_the_full_log_softmax():
    from alignray.learner.batch import SequenceBatch, forward_logprobs

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(6, 6)
            self.kept: list[int] = []

        def forward(self, input_ids, attention_mask, logits_to_keep=0):
            self.kept.append(logits_to_keep)
            logits = self.emb(input_ids) * 3
            return type("Out", (), {"logits": logits[:, -logits_to_keep:] if logits_to_keep else logits})()

    torch.manual_seed(0)
    model = Toy()
    # row 0: prompt 2 + response 2; row 1: prompt 2 + response 1 (the LM head runs on positions 1…3 only)
    ids = torch.tensor([[1, 2, 3, 4], [5, 2, 1, 0]])
    seq = SequenceBatch(input_ids=ids, attention_mask=(ids > 0).long(),
                        response_tokens=torch.tensor([[3, 4], [1, 0]]),
                        response_mask=t([[1, 1], [1, 0]]), logit_index=torch.tensor([[1, 2], [1, 2]]),
                        rollout_logprobs=torch.zeros(2, 2), rewards=torch.zeros(2),
                        group_ids=torch.zeros(2).long(), prompt_lengths=torch.tensor([2, 2]),
                        response_lengths=torch.tensor([2, 1]), loss_rows=torch.ones(2))
    logp, ent = forward_logprobs(model, seq, temperature=0.7, entropy=True)
    assert model.kept == [3]  # positions 1…3: the shared prompt position 0 never reaches the LM head
    z = model(ids, None).logits.gather(1, seq.logit_index.unsqueeze(-1).expand(-1, -1, 6)) / 0.7
    full = torch.log_softmax(z, -1)
    want = full.gather(-1, seq.response_tokens.unsqueeze(-1)).squeeze(-1) * seq.response_mask
    torch.testing.assert_close(logp, want)
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1) * seq.response_mask)
    assert not ent.requires_grad  # an entropy bonus is not in the loss: the metric stays off the graph
    assert math.isfinite(float(logp.detach().sum()))
