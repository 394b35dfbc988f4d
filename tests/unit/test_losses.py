"""Hand-computed checks for alignray.algorithms: loss aggregation, policy/KL/value losses, logits utilities
(every expected number is worked out in a comment)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import close, ids, t
from reference_losses import aggregate, kl_loss, logprob_mismatch, policy_loss, value_loss

from alignray.algorithms.logprobs import entropy_from_logits, logprobs_from_logits
from alignray.algorithms.losses import truncated_is_weights

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------------------- aggregation


def test_aggregate_modes_on_ragged_mask():
    x, mask = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), t([[1, 1, 1], [1, 0, 0]])
    close(aggregate(x, mask, "token_mean"), 2.5)  # (1+2+3+4)/4
    close(aggregate(x, mask, "seq_mean_token_mean"), 3.0)  # mean(2, 4)
    close(aggregate(x, mask, "seq_mean_token_sum_norm"), 1.666667)  # 10 / (2*3)
    close(aggregate(x, mask, "seq_mean_token_sum_norm", norm_len=5), 1.0)  # 10 / (2*5)
    # an empty row is left out of the sequence mean: mean over row 0 only = 1.5
    close(aggregate(t([[1.0, 2.0], [9.0, 9.0]]), t([[1, 1], [0, 0]]), "seq_mean_token_mean"), 1.5)
    with pytest.raises(ValueError):
        aggregate(x, mask, "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_empty_mask_is_zero_with_grad(mode):
    x = torch.tensor([[1.0, float("inf")]], requires_grad=True)
    out = aggregate(x, torch.zeros(1, 2), mode)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros(1, 2))


# ----------------------------------------------------------------------------------------- policy loss


def _one_token(ratio: float, adv: float, **kw):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 1), t([[adv]]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), stats, logp.grad.item()


@pytest.mark.parametrize(
    "ratio, adv, loss, clipped, grad",
    [
        (1.1, 1.0, -1.1, 0.0, -1.1),  # inside [0.8, 1.2]: -ratio*A, d/dlogp = -ratio*A
        (1.5, 1.0, -1.2, 1.0, 0.0),  # A>0, ratio above 1.2: -min(1.5, 1.2) = -1.2, no gradient
        (1.5, -1.0, 1.5, 0.0, 1.5),  # A<0, ratio above: -min(-1.5, -1.2) = 1.5, unclipped
        (0.5, -1.0, 0.8, 1.0, 0.0),  # A<0, ratio below 0.8: -min(-0.5, -0.8) = 0.8, clipped
        (0.5, 1.0, -0.5, 0.0, -0.5),  # A>0, ratio below: -min(0.5, 0.8) = -0.5, unclipped
    ],
)
def test_policy_loss_clipping(ratio, adv, loss, clipped, grad):
    got_loss, stats, got_grad = _one_token(ratio, adv)
    assert got_loss == pytest.approx(loss, abs=1e-5)
    assert stats["clip_frac"] == clipped
    assert stats["ratio_mean"] == pytest.approx(ratio, abs=1e-5)
    assert got_grad == pytest.approx(grad, abs=1e-5)


def test_policy_loss_clip_higher():
    # clip_eps_high 0.28: ratio 1.5, A = 1 -> -min(1.5, 1.28) = -1.28 ; low side still 0.8
    assert _one_token(1.5, 1.0, clip_eps_high=0.28)[0] == pytest.approx(-1.28, abs=1e-5)
    assert _one_token(0.5, -1.0, clip_eps_high=0.28)[0] == pytest.approx(0.8, abs=1e-5)


def test_policy_loss_dual_clip():
    # ratio 5, A = -1: standard loss max(5, 1.2) = 5, dual clip c = 3 -> min(5, 3) = 3, no gradient
    loss, stats, grad = _one_token(5.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0, abs=1e-5) and grad == 0.0 and stats["dual_clip_frac"] == 1.0
    # ratio 2, A = -1: min(2, 3) = 2, dual clip inactive
    loss, stats, _ = _one_token(2.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(2.0, abs=1e-5) and stats["dual_clip_frac"] == 0.0
    # A > 0 is never dual-clipped: ratio 5, A = 1 -> -1.2
    assert _one_token(5.0, 1.0, dual_clip=3.0)[0] == pytest.approx(-1.2, abs=1e-5)
    with pytest.raises(ValueError):
        _one_token(1.0, 1.0, dual_clip=1.0)


def test_policy_loss_masked_batch_stats_and_grads():
    # valid tokens: ratio 1.5 (clipped, loss -1.2) and 1.1 (loss -1.1); padding logp 99 is ignored
    # token_mean = -1.15, clip_frac 1/2, ratio_mean 1.3
    # approx_kl = mean((r - 1) - ln r) = ((0.5 - 0.405465) + (0.1 - 0.095310)) / 2 = (0.094535 + 0.004690)/2
    logp = torch.tensor([[math.log(1.5), math.log(1.1), 99.0]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), t([[1, 1, 0]]))
    close(loss, -1.15)
    assert stats["clip_frac"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx(1.3, abs=1e-5)
    assert stats["approx_kl"] == pytest.approx(0.0496125, abs=1e-5)
    loss.backward()
    # d(token_mean)/dlogp = -ratio*A / 2 for the unclipped token, 0 for clipped and padding
    close(logp.grad, [[0.0, -0.55, 0.0]])


def test_policy_loss_is_weights_detached():
    # ratio 1.1, A = 1, weight 0.5: -1.1 * 0.5 = -0.55
    w = torch.tensor([[0.5]], requires_grad=True)
    logp = torch.tensor([[math.log(1.1)]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), t([[1.0]]), torch.ones(1, 1), is_weights=w)
    close(loss, -0.55)
    loss.backward()
    assert w.grad is None
    assert logp.grad.item() == pytest.approx(-0.55, abs=1e-5)


def test_policy_loss_seq_mean_token_sum_norm():
    # per-token losses -1.1 (ratio 1.1, A 1) on 1 valid token of a T=2 row, B=1, norm_len 4 -> -1.1/4
    logp = t([[math.log(1.1), 0.0]])
    loss, _ = policy_loss(
        logp, torch.zeros(1, 2), torch.ones(1, 2), t([[1, 0]]), agg="seq_mean_token_sum_norm", norm_len=4
    )
    close(loss, -0.275)


# ----------------------------------------------------------------------------------------- kl / value loss


def test_kl_loss():
    # valid token: log ratio ln 2 -> k3 = 0.193147 (second token masked out)
    logp, ref = t([[math.log(0.5), math.log(0.5)]]), t([[math.log(0.25), 0.0]])
    close(kl_loss(logp, ref, t([[1, 0]])), 0.193147)
    close(kl_loss(logp, ref, t([[1, 0]]), kind="k1"), 0.693147)
    # seq_mean_token_sum_norm with T = 2: 0.693147 / 2
    close(kl_loss(logp, ref, t([[1, 0]]), kind="k1", agg="seq_mean_token_sum_norm"), 0.346574)


def test_value_loss_clipped_and_unclipped():
    values, old, returns = t([[1.0, 0.0, 0.5]]), t([[0.0, 0.0, 0.0]]), t([[2.0, 1.0, 0.4]])
    mask = torch.ones(1, 3)
    # token 0: (1-2)^2 = 1 ; clipped V = 0.2 -> (0.2-2)^2 = 3.24 ; 0.5*max = 1.62
    # token 1: (0-1)^2 = 1 ; V unchanged -> 1 ; 0.5
    # token 2: (0.5-0.4)^2 = 0.01 ; clipped V = 0.2 -> (0.2-0.4)^2 = 0.04 ; 0.02
    close(value_loss(values, old, returns, mask, clip_eps=0.2), (1.62 + 0.5 + 0.02) / 3)
    # unclipped: 0.5 * (1 + 1 + 0.01) / 3
    close(value_loss(values, old, returns, mask, clip_eps=None), 0.335)


# ----------------------------------------------------------------------------------------- logits utils


def test_entropy_from_logits():
    # uniform over V = 4 -> ln 4 = 1.386294 ; p = [0.75, 0.25] (logits [ln 3, 0]):
    # -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335
    close(entropy_from_logits(torch.zeros(2, 3, 4)), [[1.386294] * 3] * 2)
    close(entropy_from_logits(t([[[math.log(3.0), 0.0]]])), [[0.562335]])
    # stable for huge logits (shift-invariant)
    close(entropy_from_logits(t([[[1000.0 + math.log(3.0), 1000.0]]])), [[0.562335]], atol=1e-4)


def test_logprobs_from_logits():
    # logits [0, ln 2, 0] -> p = [0.25, 0.5, 0.25]: token 1 -> ln 0.5, token 0 -> ln 0.25
    logits = t([[[0.0, LN2, 0.0], [0.0, LN2, 0.0]]])
    close(logprobs_from_logits(logits, ids([[1, 0]])), [[-0.693147, -1.386294]])
    # temperature 2 on [0, 2 ln 2, 0] gives the same distribution
    close(logprobs_from_logits(logits * 2, ids([[1, 0]]), temperature=2.0), [[-0.693147, -1.386294]])
    # bf16 path (row-wise fp32 upcast); bf16 rounding of ln 2 -> loose tolerance
    out = logprobs_from_logits(logits.to(torch.bfloat16), ids([[1, 0]]))
    assert out.dtype == torch.float32
    close(out, [[-0.693147, -1.386294]], atol=5e-3)


def test_truncated_is_weights():
    # ratios: 0.5/0.25 = 2 -> capped at 1.5 ; 0.3/0.6 = 0.5 ; padding -> 0
    learner = torch.tensor([[math.log(0.5), math.log(0.3), 5.0]], requires_grad=True)
    rollout = t([[math.log(0.25), math.log(0.6), -5.0]])
    w = truncated_is_weights(learner, rollout, t([[1, 1, 0]]), cap=1.5)
    close(w, [[1.5, 0.5, 0.0]])
    assert not w.requires_grad


def test_logprob_mismatch():
    # |0.1 - 0.3| = 0.2, |0.5 - 0.4| = 0.1, padding ignored -> 0.15
    learner, rollout = t([[0.1, 0.5, 9.0]]), t([[0.3, 0.4, 0.0]])
    assert logprob_mismatch(learner, rollout, t([[1, 1, 0]])) == pytest.approx(0.15, abs=1e-6)
    assert logprob_mismatch(learner, rollout, torch.zeros(1, 3)) == 0.0
