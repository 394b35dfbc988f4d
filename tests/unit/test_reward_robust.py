"""Beyond-the-paper causal RM pieces: the shared objective (counterfactual consistency, estimate-conditioned
MMD), the `mmd_lambda: auto` rule, bias gaps and the over-correction flag of `rm eval --baseline`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import records_of, write_jsonl

from alignray.rm import RewardTrainConfig
from alignray.rm.auto_lambda import MIN_GROUP_PAIRS, balanced_accuracy, choose_lambda, heldout_split
from alignray.rm.backbones import TinyModelSpec
from alignray.rm.cli import rm_eval_main
from alignray.rm.evaluate import bias_gaps, over_correction
from alignray.rm.loop import train_reward_model
from alignray.rm.mmd import STRATUM_STRIDE
from alignray.rm.objectives import grouped_values, invariance_penalty, preference_objective
from alignray.rm.preference_data import PreferenceData

TINY = TinyModelSpec(arch="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4)


def test_objective_adds_counterfactual_consistency_by_hand():
    r = torch.tensor([2.0, 0.0, 1.0, 1.0])  # chosen [2, 0], rejected [1, 1]
    loss, stats = preference_objective(r, cf_weight=0.5, cf_rows=torch.tensor([0]), r_cf=torch.tensor([1.5]))
    bt = (F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(1.0))).item() / 2
    assert stats["bt_loss"] == pytest.approx(bt) and stats["cf"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx(bt + 0.5 * 0.25)
    assert stats["accuracy"] == 0.5


def test_swap_moves_the_estimated_winner_into_the_better_group():
    values, bins = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 1, 2, 3])
    better, b_bins, worse, w_bins = grouped_values(values, bins, torch.tensor([True, False]))
    assert better.tolist() == [3.0, 2.0] and b_bins.tolist() == [2, 1]
    assert worse.tolist() == [1.0, 4.0] and w_bins.tolist() == [0, 3]


def test_estimate_conditioning_removes_the_noise_induced_pull():
    """r = true quality (better 1, worse 0), Z on the truly better response of pairs 0-1 and the worse of pair
    2-3, pair 3 flipped: within the noisy 'chosen' group Z marks quality, so the label-conditional penalty is
    > 0 although r does not read Z; conditioning on the true order (swap pair 3) gives 0."""
    chosen_q, rejected_q = [1, 1, 1, 0], [0, 0, 0, 1]  # pair 3's label is flipped
    chosen_z, rejected_z = [1, 1, 0, 0], [0, 0, 1, 1]
    r = torch.tensor(chosen_q + rejected_q, dtype=torch.float32)
    bins = torch.tensor(chosen_z + rejected_z)
    label = invariance_penalty(r, bins, "conditional", None)
    estimate = invariance_penalty(r, bins, "conditional", torch.tensor([False, False, False, True]))
    assert label.item() > 0.1 and estimate.item() == pytest.approx(0.0, abs=1e-6)


def row(lam, acc, cf, mmd):
    return {"lambda": lam, "balanced_accuracy": acc, "counterfactual": cf, "mmd": mmd}


def test_choose_lambda_rule():
    base = row(0.0, 0.80, 0.30, 0.20)
    rows = [row(0.1, 0.80, 0.20, 0.15), row(1.0, 0.79, 0.10, 0.05), row(10.0, 0.70, 0.02, 0.01)]
    assert choose_lambda(base, rows, 0.02) == (1.0, "counterfactual")  # λ=10 loses 10 points: infeasible
    assert choose_lambda(base, rows, 0.2) == (10.0, "counterfactual")
    no_cf = {**base, "counterfactual": None}
    rows = [{**r, "counterfactual": None} for r in rows]
    assert choose_lambda(no_cf, rows, 0.2) == (1.0, "mmd")  # the smallest λ that halves BT's statistic
    assert choose_lambda(no_cf, [row(0.3, 0.5, None, 0.1)], 0.02) == (0.3, "mmd")  # none feasible: smallest λ
    # the lab's λ = auto failure: λ = 10 kept a noisy-label accuracy with a flat reward (std 7e-5 against BT's
    # 1.2): collapsed, never chosen — the next best feasible λ is
    base = {**row(0.0, 0.80, 0.30, 0.20), "spread": 1.2}
    rows = [{**row(1.0, 0.79, 0.10, 0.05), "spread": 0.003}, {**row(10.0, 0.80, 0.02, 0.01), "spread": 7e-5}]
    assert choose_lambda(base, rows, 0.02) == (1.0, "counterfactual")
    fit, held = heldout_split(10, 0.2, 0)
    assert len(held) == 2 and sorted(np.concatenate([fit, held]).tolist()) == list(range(10))


def test_balanced_accuracy_weighs_the_pairs_where_labels_follow_z_and_where_they_do_not_equally():
    # 30 pairs whose chosen response has the higher bin of Z, 10 with the lower one: a Z-biased model gets all
    # 30 right and 2 of the 10 → plain 32/40 = 0.8, balanced (1.0 + 0.2) / 2 = 0.6; a model that ranks on
    # quality gets 24 and 8 → plain 0.8 too, balanced (0.8 + 0.8) / 2 = 0.8
    bins = np.array([[1, 0]] * 30 + [[0, 1]] * 10)
    biased = np.array([True] * 30 + [True, True] + [False] * 8)
    fair = np.array([True] * 24 + [False] * 6 + [True] * 8 + [False] * 2)
    for won, want in ((biased, 0.6), (fair, 0.8)):
        rc, rr = won.astype(float), (~won).astype(float)
        assert balanced_accuracy(rc, rr, bins) == pytest.approx(want)
    # a group of fewer than MIN_GROUP_PAIRS pairs is left out; one group left: the plain accuracy
    few = np.array([[1, 0]] * 30 + [[0, 1]] * (MIN_GROUP_PAIRS - 1))
    rc, rr = np.ones(len(few)), np.zeros(len(few))
    assert balanced_accuracy(rc, rr, few) == 1.0
    # pairs across strata (or with an unbinned side) are the "same" group, not compared by bin id
    s = STRATUM_STRIDE
    across = np.array([[s, 0]] * 10 + [[-1, 3]] * 10 + [[1, 0]] * 10)
    won = np.array([False] * 20 + [True] * 10)
    assert balanced_accuracy(won.astype(float), (~won).astype(float), across) == pytest.approx(0.5)


def test_bias_gaps_and_over_correction_by_hand():
    rc, rr = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0])  # pair 2 wrong
    z = np.array([["a", "none"], ["a", "none"], ["none", "a"], ["none", "a"]])
    gaps = bias_gaps(rc, rr, z)
    assert gaps["a"]["gap"] == pytest.approx(1.0 - 0.5) and gaps["none"]["gap"] == pytest.approx(0.5 - 1.0)
    assert bias_gaps(rc, rr, np.array([[3.0, 1.0], [2.0, 1.0], [1.0, 2.0], [0.0,
                                                                            1.0]]))["higher"]["gap"] == 0.5
    base = {"z": {"a": {"gap": 0.05}, "none": {"gap": -0.05}}}
    model = {"z": {"a": {"gap": -0.10}, "none": {"gap": 0.10}}}
    assert [f["value"] for f in over_correction(model, base)] == ["a", "none"]
    assert over_correction({"z": {"a": {"gap": -0.03}}}, base) == []  # opposite sign but smaller


def tagged_data(n: int, seed: int) -> PreferenceData:
    """Chosen has more 'good' words; a tag word rides on 75 % of chosen / 25 % of rejected responses."""
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected, tags, cf = [], [], [], [], []
    for _ in range(n):
        t = [bool(rng.uniform() < 0.75), bool(rng.uniform() < 0.25)]
        c = "good good bad" + (" shiny" if t[0] else "")
        prompts.append(f"q{rng.integers(5)}")
        chosen.append(c)
        rejected.append("bad bad good" + (" shiny" if t[1] else ""))
        tags.append(["shiny" if x else "plain" for x in t])
        cf.append(c.removesuffix(" shiny") if t[0] else c + " shiny")
    return PreferenceData(prompts, chosen, rejected, {"tag": np.array(tags)}, counterfactuals={"tag": cf})


def test_auto_lambda_sweep_is_saved_and_rm_eval_compares_to_a_baseline(tmp_path):
    data = tagged_data(64, 0)
    common = {"tiny_model": TINY, "epochs": 2, "batch_size": 16, "lr": 3e-3, "max_length": 16}
    cfg = RewardTrainConfig(kind="causal", mmd_attribute="tag", mmd_bins="categorical", mmd_auto_grid=[0.1,
                                                                                                       1.0],
                            mmd_condition="estimate", **common)
    model = train_reward_model(cfg, data)
    sweep = model.metadata["mmd_auto"]
    assert [r["lambda"] for r in sweep["sweep"]] == [0.1, 1.0] and sweep["metric"] == "counterfactual"
    assert model.metadata["mmd_lambda"] == sweep["chosen_lambda"] and model.metadata["cf_weight"] == 1.0
    assert 0.0 <= sweep["estimate_reversed_share"] <= 1.0
    model.save(tmp_path / "crm")
    saved = json.loads((tmp_path / "crm" / "alignray_rm.json").read_text())
    assert saved["metadata"]["mmd_auto"]["chosen_lambda"] == sweep["chosen_lambda"]
    train_reward_model(RewardTrainConfig(kind="bt", **common), data).save(tmp_path / "bt")
    write_jsonl(tmp_path / "test.jsonl", records_of(tagged_data(24, 1)))
    results = rm_eval_main(str(tmp_path / "crm"), str(tmp_path / "test.jsonl"), str(tmp_path / "eval.json"),
                           baseline=str(tmp_path / "bt"))
    assert set(results["bias_gap"]["tag"]) == {"shiny", "plain"}
    assert "over_correction" in results and "bias_gap" in results["baseline"]


def test_a_collapsed_final_fit_is_refitted_at_a_smaller_lambda():
    """The final fit on all pairs may collapse where the sweep's fits did not (the lab's λ = 10): refitted at
    the next smaller λ of the sweep until its reward spread is no longer collapsed."""
    from alignray.rm.config import RewardTrainConfig
    from alignray.rm.loop import _refit_if_collapsed
    from alignray.rm.pairs import PreferenceData

    class Flat:  # a reward model whose spread is `scale`
        def __init__(self, scale):
            self.scale = scale

        def score(self, prompts, responses):
            return {"reward": self.scale * np.arange(len(responses), dtype=np.float64)}

    data = PreferenceData(["p"] * 4, ["a", "b", "c", "d"], ["e", "f", "g", "h"])
    sweep = {"baseline_bt": {"spread": 1.0}, "sweep": [{"lambda": lam} for lam in (0.1, 1.0, 10.0)]}
    cfg = RewardTrainConfig(kind="causal", mmd_lambda=10.0, tiny_model={})
    spreads = {1.0: 1e-6, 0.1: 0.5}  # λ = 1 collapses too; λ = 0.1 does not
    tried = []

    def refit(c):
        tried.append(c.mmd_lambda)
        return Flat(spreads[c.mmd_lambda])

    model, cfg = _refit_if_collapsed(Flat(1e-7), cfg, data, sweep, refit, None)
    assert tried == [1.0, 0.1] and cfg.mmd_lambda == 0.1 and model.scale == 0.5
    assert sweep["collapsed_final"] == [10.0, 1.0]
    cfg = RewardTrainConfig(kind="causal", mmd_lambda=1.0, tiny_model={})
    no_sweep = {"baseline_bt": {"spread": 1.0}, "sweep": []}
    kept, same = _refit_if_collapsed(Flat(0.2), cfg, data, no_sweep, refit, None)
    assert same.mmd_lambda == 1.0 and kept.scale == 0.2
