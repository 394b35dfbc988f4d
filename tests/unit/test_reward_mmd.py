import numpy as np
import pytest
import torch

from alignray.rm.mmd import (
    STRATUM_STRIDE,
    bandwidths_for,
    causal_penalty,
    conditional_causal_penalty,
    fit_bins,
    median_bandwidth,
    stratified_bins,
)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth="median") -> torch.Tensor:
    """Biased MMD²(P_x, P_y) = mean K(x, x) + mean K(y, y) - 2 mean K(x, y), bandwidth from the pooled sample:
    the causal penalty of two bins."""
    bins = torch.cat([torch.zeros(len(x)), torch.ones(len(y))]).long()
    return causal_penalty(torch.cat([x, y]), bins, bandwidth, min_bin_size=1)

# with σ = 1: MMD²_b({0}, {1}) = 1 + 1 - 2 e^{-1/2}
MMD_0_1 = 0.7869387
# with σ = 1: MMD²_b({0}, {2}) = 2 - 2 e^{-2}
MMD_0_2 = 1.7293294


def test_mmd_hand_computed_single_and_repeated_points():
    assert mmd2(torch.tensor([0.0]), torch.tensor([1.0]), bandwidth=1.0).item() == pytest.approx(MMD_0_1,
                                                                                                 abs=1e-6)
    # the median pairwise distance of the pooled {0, 1} is 1, so the median rule gives the same number
    assert mmd2(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])).item() == pytest.approx(MMD_0_1, abs=1e-6)


def test_mmd_multi_bandwidth_sums_kernels():
    # Σ_{f ∈ {1/4, 1/2, 1, 2, 4}} 2 (1 - exp(-1 / (2 f²))) around the median σ = 1
    value = mmd2(torch.tensor([0.0]), torch.tensor([1.0]), bandwidth="multi").item()
    assert value == pytest.approx(4.8121369, abs=1e-5)


def test_mmd_zero_for_identical_and_positive_for_shifted():
    torch.manual_seed(0)
    x = torch.randn(64)
    assert abs(mmd2(x, x.clone()).item()) < 1e-6
    assert mmd2(x, x + 2.0).item() > 0.3
    # representation-valued samples [n, d] work too
    h = torch.randn(32, 8)
    assert abs(mmd2(h, h.clone()).item()) < 1e-6
    assert mmd2(h, h + 1.0).item() > 0.1


def test_median_bandwidth_falls_back_when_all_equal():
    assert median_bandwidth(torch.zeros(5)).item() == 1.0
    assert bandwidths_for(torch.tensor([0.0, 3.0])).tolist() == [3.0]
    with pytest.raises(ValueError, match="bandwidth"):
        bandwidths_for(torch.zeros(3), "silverman")


def test_causal_penalty_sums_bin_pairs_and_skips_small_bins():
    values = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    bins = torch.tensor([0, 0, 1, 1, 2, 2])
    # pairs (0,1), (1,2): MMD_0_1 each; (0,2): MMD_0_2. Median distance of the pooled batch is 1.
    assert causal_penalty(values, bins).item() == pytest.approx(2 * MMD_0_1 + MMD_0_2, abs=1e-5)
    assert causal_penalty(values, bins,
                          reduction="mean").item() == pytest.approx((2 * MMD_0_1 + MMD_0_2) / 3, abs=1e-5)
    # bin 2 has one sample and bin -1 means "no bin": only the (0, 1) pair counts
    skipped = causal_penalty(torch.tensor([0.0, 0.0, 1.0, 1.0, 7.0, 9.0]), torch.tensor([0, 0, 1, 1, 2, -1]),
                             1.0)
    assert skipped.item() == pytest.approx(MMD_0_1, abs=1e-6)


def test_causal_penalty_with_fewer_than_two_bins_is_zero_and_differentiable():
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    penalty = causal_penalty(values, torch.tensor([0, 0, 1]))
    assert penalty.item() == 0.0
    penalty.backward()
    assert values.grad is not None


def test_causal_penalty_gradient_pulls_bins_together():
    values = torch.tensor([0.0, 0.1, 1.0, 1.1], requires_grad=True)
    causal_penalty(values, torch.tensor([0, 0, 1, 1]), bandwidth=1.0).backward()
    grad = values.grad
    assert torch.all(grad[:2] < 0) and torch.all(grad[2:] > 0)  # descent raises bin 0 and lowers bin 1


def test_conditional_penalty_adds_chosen_and_rejected_parts():
    chosen = torch.tensor([0.0, 0.0, 1.0, 1.0])
    rejected = torch.tensor([5.0, 5.0, 5.0, 5.0])
    bins = torch.tensor([0, 0, 1, 1])
    total = conditional_causal_penalty(chosen, bins, rejected, bins, bandwidth=1.0)
    # the rejected rewards are independent of the bins
    assert total.item() == pytest.approx(MMD_0_1, abs=1e-6)


def test_fit_bins_rules():
    quantile = fit_bins(np.arange(10), "quantile", 2)
    assert quantile.edges == [4.5]
    assert quantile.assign(np.array([0, 4, 5, 9])).tolist() == [0, 0, 1, 1]
    width = fit_bins(np.array([0.0, 10.0]), "equal_width", 5)
    assert width.edges == [2.0, 4.0, 6.0, 8.0]
    assert width.assign(np.array([1.0, 3.0, 9.9, 11.0])).tolist() == [0, 1, 4, 4]
    # ties collapse quantile edges instead of making empty bins
    assert fit_bins(np.array([1, 1, 1, 1, 2]), "quantile", 4).num_bins == 2
    with pytest.raises(ValueError, match="bin rule"):
        fit_bins(np.arange(4), "kmeans", 2)


def test_categorical_bins_for_attribute_combinations():
    z = np.array([["old", "f"], ["young", "m"], ["old", "f"], ["old", "m"]])
    spec = fit_bins(z, "categorical")
    ids = spec.assign(z)
    assert spec.num_bins == 3
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 3
    assert spec.assign(np.array([["young", "f"]])).tolist() == [-1]
    binary = fit_bins(np.array([True, False, True]), "categorical")
    assert binary.assign(np.array([False, True])).tolist() == [0, 1]


def test_penalty_compares_bins_only_within_a_stratum():
    # stratum 0: bins {0} vs {1} (MMD_0_1); stratum 1: bins {0} vs {2} (MMD_0_2). Across strata the pairs
    # (0, 2), (1, 0), ... are not compared: their rewards may differ for a real reason.
    s = STRATUM_STRIDE
    values = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0, 2.0])
    bins = torch.tensor([0, 0, 1, 1, s, s, s + 1, s + 1])
    assert causal_penalty(values, bins, 1.0).item() == pytest.approx(MMD_0_1 + MMD_0_2, abs=1e-6)
    assert causal_penalty(values, bins, 1.0, reduction="mean").item() == pytest.approx(
        (MMD_0_1 + MMD_0_2) / 2, abs=1e-6)
    # one bin per stratum: no pair within a stratum, so 0 (still attached to the graph)
    lone = torch.tensor([0.0, 0.0, 5.0, 5.0], requires_grad=True)
    penalty = causal_penalty(lone, torch.tensor([0, 0, s, s]), 1.0)
    assert penalty.item() == 0.0
    penalty.backward()
    assert lone.grad is not None


def test_stratified_bins_fit_quantiles_inside_each_stratum():
    # stratum "a" has short values, "b" long ones: pooled quantile bins would put all of "a" low and all of
    # "b" high; per stratum each gets its own two halves
    z = np.array([1, 2, 3, 4, 101, 102, 103, 104])
    strata = np.array(["a"] * 4 + ["b"] * 4)
    ids = stratified_bins(z, strata, "quantile", 2)
    s = STRATUM_STRIDE
    assert ids.tolist() == [0, 0, 1, 1, s, s, s + 1, s + 1]
    assert stratified_bins(z, None, "quantile", 2).tolist() == fit_bins(z, "quantile", 2).assign(z).tolist()
    with pytest.raises(ValueError, match="strata has 3 values"):
        stratified_bins(z, strata[:3])
