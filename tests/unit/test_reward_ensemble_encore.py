import math
import warnings

import numpy as np
import pytest
import torch

from alignray.rewards.encore import Discretisation, EncoreWeights, encore_weights, fit_encore, rating_entropy
from alignray.rewards.ensemble import aggregate, member_std, warm_average

# k = 3 members, n = 2 samples. Column 0: {1, 3, 2}, mean 2, var0 = 2/3. Column 1: {2, 2, 8}, mean 4, var0 =
# 8.
REWARDS = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 8.0]])


def test_aggregations_hand_computed():
    assert aggregate(REWARDS, "mean").tolist() == [2.0, 4.0]
    assert aggregate(REWARDS, "worst_case").tolist() == [1.0, 2.0]
    np.testing.assert_allclose(member_std(REWARDS), [math.sqrt(2 / 3), math.sqrt(8)])
    np.testing.assert_allclose(aggregate(REWARDS, "lcb", 1.0), [2 - math.sqrt(2 / 3), 4 - math.sqrt(8)])
    np.testing.assert_allclose(aggregate(REWARDS, "uncertainty_weighted", 0.5), [2 - 1 / 3, 0.0], atol=1e-12)
    # ddof = 1: var = 1 and 12
    np.testing.assert_allclose(aggregate(REWARDS, "uncertainty_weighted", 0.5, ddof=1), [1.5, -2.0],
                               atol=1e-12)


def test_aggregations_accept_torch_and_single_member():
    t = torch.tensor(REWARDS)
    assert torch.allclose(aggregate(t, "lcb", 1.0), torch.tensor(aggregate(REWARDS, "lcb", 1.0)))
    assert aggregate(t, "worst_case").tolist() == [1.0, 2.0]
    assert aggregate(REWARDS[:1], "uncertainty_weighted", ddof=1).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(REWARDS, "median")
    with pytest.raises(ValueError, match=r"\[k, n\]"):
        aggregate(np.ones(3), "mean")


def test_warm_average_uniform_and_weighted():
    a = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([0, 1])}
    assert warm_average([a, b])["w"].tolist() == [2.0, 4.0]
    assert warm_average([a, b], [0.25, 0.75])["w"].tolist() == [2.5, 5.0]
    assert warm_average([a, b])["ids"].tolist() == [0, 1]


def test_warm_average_rejects_mismatched_members():
    a = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="'w'"):
        warm_average([a, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="share"):
        warm_average([a, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="weight"):
        warm_average([a, a], [0.5, 0.6])


def test_rating_entropy_hand_computed():
    disc2 = Discretisation(levels=2)
    # two equal halves: 1 bit
    assert rating_entropy(np.array([0.0, 0.1, 0.9, 1.0]), disc2) == pytest.approx(1.0)
    assert rating_entropy(np.array([0.9, 1.0, 0.8]), disc2) == 0.0
    uniform = np.arange(10) / 10 + 0.05
    assert rating_entropy(uniform) == pytest.approx(math.log2(10))
    assert rating_entropy(uniform, Discretisation(log_base=math.e)) == pytest.approx(math.log(10))


def test_encore_weights_for_known_entropies():
    # softmax([0, -1]) = [1 / (1 + e^-1), e^-1 / (1 + e^-1)]
    np.testing.assert_allclose(encore_weights(np.array([0.0, 2.0]), tau=2.0), [0.7310586, 0.2689414],
                               atol=1e-7)
    np.testing.assert_allclose(encore_weights(np.array([1.0, 1.0, 1.0])), [1 / 3] * 3)
    np.testing.assert_allclose(encore_weights(np.array([0.0, 3.0]), tau=1e9), [0.5, 0.5])
    with pytest.raises(ValueError, match="tau"):
        encore_weights(np.array([1.0]), tau=0.0)


def test_fit_encore_drops_constant_heads_with_warning(tmp_path):
    ratings = np.array([[0.0, 0.5, 0.0], [1.0, 0.5, 0.0], [0.0, 0.5, 0.1], [1.0, 0.5, 0.0]])
    with pytest.warns(UserWarning, match="head_b"):
        enc = fit_encore(ratings, ["head_a", "head_b", "head_c"], tau=2.0, disc=Discretisation(levels=2))
    # head_a: 1 bit, head_c: all in level 0 → 0 bits; head_b is constant and dropped
    assert enc.entropies == pytest.approx([1.0, 0.0, 0.0])
    assert enc.weights == pytest.approx([0.3775407, 0.0, 0.6224593], abs=1e-7)
    assert enc.dropped_heads == ["head_b"]
    enc.save(tmp_path / "encore.json")
    assert EncoreWeights.load(tmp_path / "encore.json") == enc
    with warnings.catch_warnings(), pytest.raises(ValueError, match="constant"):
        warnings.simplefilter("ignore")
        fit_encore(np.ones((3, 2)), ["a", "b"])
