"""Hand-computed checks for alignray.algorithms: KL estimators and advantage estimators (every expected number
is worked out in a comment)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import close, ids, t

from alignray.algorithms.advantages import (
    compute_advantages,
    discounted_returns,
    dr_grpo_advantages,
    gae_advantages,
    group_mean_std,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    token_level_rewards,
    whiten,
)
from alignray.algorithms.estimators import ALGORITHMS
from alignray.algorithms.kl import kl_estimate

LN2 = math.log(2.0)


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


# ----------------------------------------------------------------------------------------- token-level
# returns


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


