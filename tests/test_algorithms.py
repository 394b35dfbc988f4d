"""Hand-computed checks for system.algorithms (every expected number is worked out in a comment)."""

from __future__ import annotations

import math

import pytest
import torch

from system.algorithms import (
    ALGORITHMS,
    aggregate,
    compute_advantages,
    discounted_returns,
    dr_grpo_advantages,
    entropy_from_logits,
    gae_advantages,
    group_mean_std,
    grpo_advantages,
    kl_estimate,
    kl_loss,
    logprob_mismatch,
    logprobs_from_logits,
    policy_loss,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    token_level_rewards,
    truncated_is_weights,
    value_loss,
    whiten,
)

LN2 = math.log(2.0)


def t(x, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def ids(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.int64)


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, t(expected).to(actual.dtype), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------- kl


def test_kl_estimators_at_log_ratio_ln2():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])  # log ratio = ln 2 = 0.693147
    close(kl_estimate(logp, ref, "k1"), [0.693147])
    close(kl_estimate(logp, ref, "k2"), [0.240227])  # 0.5 * 0.693147^2 = 0.5 * 0.480453
    close(kl_estimate(logp, ref, "k3"), [0.193147])  # exp(-ln2) - 1 + ln2 = 0.5 - 1 + 0.693147
    # log ratio = -ln 2: k3 = 2 - 1 - 0.693147 = 0.306853 (k3 is asymmetric, always >= 0)
    close(kl_estimate(ref, logp, "k3"), [0.306853])


def test_kl_clamps_log_ratio_and_rejects_unknown_kind():
    assert kl_estimate(t([100.0]), t([0.0]), "k1").item() == 20.0  # clamped to [-20, 20]
    k3 = kl_estimate(t([0.0]), t([100.0]), "k3")  # log ratio -100 -> -20: exp(20) - 1 - 20
    assert torch.isfinite(k3).all()
    close(k3, [math.exp(20.0) - 21.0], atol=1e2)
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(t([0.0]), t([0.0]), "k4")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- group stats


def test_group_mean_std_ragged_groups():
    # group 0 = {1, 2, 3}: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1; group 1 = {5}: std 0
    mean, std, size = group_mean_std(t([1.0, 2.0, 3.0, 5.0]), ids([0, 0, 0, 1]))
    close(mean, [2.0, 2.0, 2.0, 5.0])
    close(std, [1.0, 1.0, 1.0, 0.0])
    close(size, [3.0, 3.0, 3.0, 1.0])


def test_group_mean_std_unsorted_noncontiguous_ids():
    # id 7 = {1, 3}: mean 2, std sqrt(2) = 1.414214 ; id 3 = {4, 6}: mean 5, std sqrt(2)
    mean, std, size = group_mean_std(t([1.0, 4.0, 3.0, 6.0]), ids([7, 3, 7, 3]))
    close(mean, [2.0, 5.0, 2.0, 5.0])
    close(std, [1.414214] * 4)
    close(size, [2.0] * 4)


# ----------------------------------------------------------------------------------------- outcome advantages


def test_grpo_two_groups():
    # each group {1, 0}: mean 0.5, unbiased std sqrt(0.5) = 0.707107 -> A = +-0.5 / 0.707107 = +-0.707107
    mask = t([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    adv = grpo_advantages(t([1.0, 0.0, 0.0, 1.0]), ids([0, 0, 1, 1]), mask)
    a = 0.707107
    close(adv, [[a, a, 0], [-a, -a, -a], [-a, 0, 0], [a, a, a]])


def test_grpo_singleton_and_constant_groups_are_zero_not_nan():
    # group 0 = {1, 2, 3}: mean 2, std 1 -> [-1, 0, 1]; group 1 = {5} -> 0; group 2 = {4, 4} -> 0
    adv = grpo_advantages(t([1.0, 2.0, 3.0, 5.0, 4.0, 4.0]), ids([0, 0, 0, 1, 2, 2]), torch.ones(6, 1))
    assert torch.isfinite(adv).all()
    close(adv, [[-1.0], [0.0], [1.0], [0.0], [0.0], [0.0]])


def test_dr_grpo_no_std_division():
    # group 0 = {1, 2, 3}, mean 2 -> [-1, 0, 1]; group 1 = {5} -> 0
    adv = dr_grpo_advantages(t([1.0, 2.0, 3.0, 5.0]), ids([0, 0, 0, 1]), t([[1, 1], [1, 0], [1, 1], [1, 1]]))
    close(adv, [[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])


def test_rloo_leave_one_out():
    # [1, 2, 3]: 1 - (2+3)/2 = -1.5 ; 2 - (1+3)/2 = 0 ; 3 - (1+2)/2 = 1.5 ; singleton group {9} -> 0
    adv = rloo_advantages(t([1.0, 2.0, 3.0, 9.0]), ids([0, 0, 0, 1]), torch.ones(4, 2))
    assert torch.isfinite(adv).all()
    close(adv, [[-1.5, -1.5], [0.0, 0.0], [1.5, 1.5], [0.0, 0.0]])


# ----------------------------------------------------------------------------------------- token-level returns


def test_token_level_rewards_kl_and_last_token():
    mask = t([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0]])
    out = token_level_rewards(t([1.0, 2.0, 5.0]), mask, kl, kl_coef=0.5)
    # row 0: -0.5*kl = [-0.05, -0.1, -0.15], + 1 on last token -> 0.85
    # row 1: [-0.2, -0.25 + 2 = 1.75, padding 0] ; row 2: no valid token -> all 0
    close(out, [[-0.05, -0.1, 0.85], [-0.2, 1.75, 0.0], [0.0, 0.0, 0.0]])
    # without KL only the last-token reward remains
    close(token_level_rewards(t([1.0, 2.0, 5.0]), mask), [[0, 0, 1.0], [0, 2.0, 0], [0, 0, 0]])


def test_discounted_returns():
    # gamma 0.5, r = [1, 2, 3]: G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75
    # row 1 has padding at t=2 (its reward 9 is ignored): G1 = 2, G0 = 1 + 0.5*2 = 2
    r, mask = t([[1.0, 2.0, 3.0], [1.0, 2.0, 9.0]]), t([[1, 1, 1], [1, 1, 0]])
    close(discounted_returns(r, mask, gamma=0.5), [[2.75, 3.5, 3.0], [2.0, 2.0, 0.0]])
    # gamma 1: reverse cumulative sums [6, 5, 3] and [3, 2, 0]
    close(discounted_returns(r, mask, gamma=1.0), [[6.0, 5.0, 3.0], [3.0, 2.0, 0.0]])


def test_whiten_masked():
    # valid values 1, 2, 3, 4: mean 2.5, population var (2.25+0.25+0.25+2.25)/4 = 1.25, std 1.118034
    # -> (x - 2.5)/1.118034 = [-1.341641, -0.447214, 0.447214, 1.341641]; padding (100s) -> 0
    x, mask = t([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]]), t([[1, 1, 1], [1, 0, 0]])
    close(whiten(x, mask), [[-1.341641, -0.447214, 0.447214], [1.341641, 0.0, 0.0]])
    # shift_mean=False adds the mean 2.5 back
    close(whiten(x, mask, shift_mean=False), [[1.158359, 2.052786, 2.947214], [3.841641, 0.0, 0.0]])
    assert whiten(x, torch.zeros(2, 3)).abs().sum().item() == 0.0  # empty mask: zeros, no NaN


def test_reinforce_pp():
    # token rewards [[0, 1], [0, pad]] -> returns (gamma 1) [[1, 1], [0, pad]]
    # valid returns {1, 1, 0}: mean 2/3, pop var ((1/3)^2*2 + (2/3)^2)/3 = 2/9, std 0.471405
    # -> (1 - 2/3)/0.471405 = 0.707107 ; (0 - 2/3)/0.471405 = -1.414214
    adv = reinforce_pp_advantages(t([1.0, 0.0]), t([[1, 1], [1, 0]]))
    close(adv, [[0.707107, 0.707107], [-1.414214, 0.0]])


def test_reinforce_pp_with_kl():
    # kl_coef 0.5, kl [[1, 0], [0, 0]] -> token rewards [[-0.5, 1], [0, 0]] -> returns [[0.5, 1], [0, 0]]
    # mean 0.375, pop var (0.125^2 + 0.625^2 + 2*0.375^2)/4 = 0.171875, std 0.414578
    # -> [0.125, 0.625, -0.375, -0.375] / 0.414578
    adv = reinforce_pp_advantages(t([1.0, 0.0]), torch.ones(2, 2), t([[1.0, 0.0], [0.0, 0.0]]), kl_coef=0.5)
    close(adv, [[0.301511, 1.507557], [-0.904534, -0.904534]])


def test_reinforce_pp_baseline():
    # group means 0.5 and 3 -> centred rewards [0.5, -0.5, 0, 0] (T = 1, so returns = rewards)
    # mean 0, pop var (0.25 + 0.25)/4 = 0.125, std 0.353553 -> [1.414214, -1.414214, 0, 0]
    adv = reinforce_pp_baseline_advantages(t([1.0, 0.0, 3.0, 3.0]), ids([0, 0, 1, 1]), torch.ones(4, 1))
    close(adv, [[1.414214], [-1.414214], [0.0], [0.0]])


def test_gae_gamma1_lam1():
    # r = [0, 0, 1], V = [0.5, 0.6, 0.7]: d2 = 1 - 0.7 = 0.3, d1 = 0.7 - 0.6 = 0.1, d0 = 0.6 - 0.5 = 0.1
    # A = [0.5, 0.4, 0.3] (= sum r - V_t), returns = A + V = [1, 1, 1]
    # row 1 padded at t=2 (V 0.9 ignored): r = [0, 1]: A1 = 1 - 0.6 = 0.4, A0 = 0.6 - 0.5 + 0.4 = 0.5
    r = t([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    v = t([[0.5, 0.6, 0.7], [0.5, 0.6, 0.9]])
    adv, ret = gae_advantages(r, v, t([[1, 1, 1], [1, 1, 0]]), gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.3], [0.5, 0.4, 0.0]])
    close(ret, [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_gae_gamma09_lam05():
    # d2 = 1 + 0 - 0.7 = 0.3 ; d1 = 0 + 0.9*0.7 - 0.6 = 0.03 ; d0 = 0.9*0.6 - 0.5 = 0.04 ; gamma*lam = 0.45
    # A2 = 0.3 ; A1 = 0.03 + 0.45*0.3 = 0.165 ; A0 = 0.04 + 0.45*0.165 = 0.11425
    # returns = A + V = [0.61425, 0.765, 1.0]
    adv, ret = gae_advantages(
        t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=0.9, lam=0.5
    )
    close(adv, [[0.11425, 0.165, 0.3]])
    close(ret, [[0.61425, 0.765, 1.0]])


# ----------------------------------------------------------------------------------------- dispatcher


def test_algorithms_tuple():
    assert ALGORITHMS == ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo")


def test_compute_advantages_grpo_with_kl_in_reward():
    # seq KL penalty 0.25 * (2 + 0) = 0.5 (kl 7 on padding ignored) -> rewards [0.5, 0, 0]
    # mean 1/6, deviations [1/3, -1/6, -1/6], unbiased var (1/9 + 2/36)/2 = 1/12, std 0.288675
    # -> A = [1.154701, -0.577350, -0.577350]
    mask = t([[1, 1], [1, 1], [1, 0]])
    kl = t([[2.0, 0.0], [0.0, 0.0], [0.0, 7.0]])
    adv, ret = compute_advantages("grpo", t([1.0, 0.0, 0.0]), ids([0, 0, 0]), mask, token_kl=kl, kl_coef=0.25)
    assert ret is None
    close(adv, [[1.154701, 1.154701], [-0.577350, -0.577350], [-0.577350, 0.0]])


def test_compute_advantages_dr_grpo_with_kl_in_reward():
    # rewards [1, 0] - 0.25 * [1 + 1, 0] = [0.5, 0]; mean 0.25 -> [0.25, -0.25]
    kl = t([[1.0, 1.0], [0.0, 0.0]])
    adv, ret = compute_advantages(
        "dr_grpo", t([1.0, 0.0]), ids([0, 0]), torch.ones(2, 2), token_kl=kl, kl_coef=0.25
    )
    assert ret is None
    close(adv, [[0.25, 0.25], [-0.25, -0.25]])


def test_compute_advantages_rloo():
    # [1, 2, 3] -> [-1.5, 0, 1.5] (see test_rloo_leave_one_out)
    adv, ret = compute_advantages("rloo", t([1.0, 2.0, 3.0]), ids([4, 4, 4]), t([[1, 0], [1, 1], [1, 1]]))
    assert ret is None
    close(adv, [[-1.5, 0.0], [0.0, 0.0], [1.5, 1.5]])


def test_compute_advantages_reinforce_pp_variants():
    # same numbers as test_reinforce_pp / test_reinforce_pp_baseline
    adv, ret = compute_advantages("reinforce_pp", t([1.0, 0.0]), ids([0, 1]), t([[1, 1], [1, 0]]))
    assert ret is None
    close(adv, [[0.707107, 0.707107], [-1.414214, 0.0]])
    adv, ret = compute_advantages(
        "reinforce_pp_baseline", t([1.0, 0.0, 3.0, 3.0]), ids([0, 0, 1, 1]), torch.ones(4, 1)
    )
    assert ret is None
    close(adv, [[1.414214], [-1.414214], [0.0], [0.0]])


def test_compute_advantages_ppo():
    # GAE (gamma 1, lam 1) on r = [0, 0, 1], V = [0.5, 0.6, 0.7] -> A = [0.5, 0.4, 0.3], returns [1, 1, 1]
    # whitened: mean 0.4, pop var 0.02/3, std 0.081650 -> [1.224745, 0, -1.224745]
    values = t([[0.5, 0.6, 0.7]])
    adv, ret = compute_advantages(
        "ppo", t([1.0]), ids([0]), torch.ones(1, 3), values=values, gamma=1.0, lam=1.0
    )
    close(adv, [[1.224745, 0.0, -1.224745]])
    assert ret is not None
    close(ret, [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="values"):
        compute_advantages("ppo", t([1.0]), ids([0]), torch.ones(1, 3))


def test_compute_advantages_unknown_name():
    with pytest.raises(ValueError, match="reinforce_pp_baseline"):
        compute_advantages("a2c", t([1.0]), ids([0]), torch.ones(1, 1))


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
