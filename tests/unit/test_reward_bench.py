"""The benchmark generators produce the ground truth they document (the full runs are `alignray rm bench
NAME`)."""

from math import comb

import numpy as np
import pytest
from rm_bench import BENCHMARKS, length_bias, noisy_raters, overoptimisation, sycophancy
from scipy.stats import spearmanr


def test_registry_names():
    assert set(BENCHMARKS) == {"length-bias", "noisy-raters", "overoptimisation", "sycophancy",
                               "haf-small-data", "concept-text", "sycophancy-text", "haf-text"}


def test_concept_text_generator_rates_flips_and_exact_counterfactuals():
    from rm_bench import concept_text as ct

    train_pairs = ct.make_pairs(1000, 0, "concept", train=True)
    better = np.array([p["better"].value != "none" for p in train_pairs])
    worse = np.array([p["worse"].value != "none" for p in train_pairs])
    assert better.mean() == pytest.approx(0.8, abs=0.04) and worse.mean() == pytest.approx(0.2, abs=0.04)
    noisy = ct.to_data(train_pairs, 0.25, 0, "train")
    q = noisy.attributes["quality"]
    assert np.mean(q[:, 0] < q[:, 1]) == pytest.approx(0.25, abs=0.04)  # flipped labels
    assert noisy.attributes["present"][:, 0].mean() == pytest.approx(0.65, abs=0.05)
    test = ct.to_data(ct.make_pairs(1000, 1, "concept", train=False), 0.0, 0, "test")
    assert np.all(test.attributes["quality"][:, 0] > test.attributes["quality"][:, 1])
    assert test.attributes["present"].mean() == pytest.approx(0.5, abs=0.04)
    pair = train_pairs[0]["better"]
    cf_value = train_pairs[0]["cf"][0]
    assert (pair.value == "none") != (cf_value == "none")
    assert pair.render(cf_value) != pair.render() and pair.render(pair.value) == pair.render()
    one = ct.make_pairs(3, 5, "sycophancy", train=False)
    assert one[0]["better"].render() == ct.make_pairs(3, 5, "sycophancy", train=False)[0]["better"].render()


def test_length_bias_train_is_biased_and_test_is_not():
    train = length_bias.make_data(600, seed=0, biased_labels=True)
    test = length_bias.make_data(600, seed=1, biased_labels=False)
    assert np.mean(train.attributes["length"][:, 0] > train.attributes["length"][:, 1]) > 0.55
    q, length = test.attributes["quality"], test.attributes["length"]
    assert np.all(q[:, 0] > q[:, 1])
    assert abs(spearmanr(q.ravel(), length.ravel()).statistic) < 0.1
    assert length_bias.make_data(5, 0, True).chosen == length_bias.make_data(5, 0, True).chosen  # seeded


def test_sycophancy_prefix_rates():
    train = sycophancy.make_data(1000, 0, train=True)
    test = sycophancy.make_data(1000, 1, train=False)
    assert train.attributes["prefix"][:, 0].mean() == pytest.approx(0.8, abs=0.05)
    assert train.attributes["prefix"][:, 1].mean() == pytest.approx(0.2, abs=0.05)
    assert test.attributes["prefix"].mean() == pytest.approx(0.5, abs=0.05)
    assert sycophancy.toggle(sycophancy.toggle("g1 b2")) == "g1 b2"


def test_noisy_raters_entropy_rises_with_noise():
    from alignray.rewards.encore import rating_entropy

    data = noisy_raters.make_data(500, 0)
    ratings = np.concatenate([data.rating_matrix(0), data.rating_matrix(1)])
    entropies = [rating_entropy(col) for col in ratings.T]
    assert entropies[0] < entropies[2] < entropies[5]


def test_best_of_n_expectation_matches_enumeration():
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=7), rng.normal(size=7)
    for n in (1, 3, 7):
        from itertools import combinations

        picks = [gold[list(c)][np.argmax(proxy[list(c)])] for c in combinations(range(7), n)]
        assert len(picks) == comb(7, n)
        assert overoptimisation.best_of_n_gold(proxy, gold, n) == pytest.approx(np.mean(picks))
