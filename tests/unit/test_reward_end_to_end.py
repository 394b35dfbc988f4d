"""Small single-process train → save → load → eval runs, one per loss family."""

import json

import numpy as np
import pytest
from conftest import records_of, write_jsonl

from alignray.errors import ConfigError
from alignray.rewards.loading import load_reward_model
from alignray.rm import RewardTrainConfig
from alignray.rm.backbones import TinyModelSpec
from alignray.rm.cli import rm_bench_main, rm_eval_main
from alignray.rm.evaluate import evaluate_reward_model, format_table
from alignray.rm.loop import attribute_bins, collate, reward_loss, train_reward_model
from alignray.rm.mmd import STRATUM_STRIDE
from alignray.rm.preference_data import PreferenceData

TINY = TinyModelSpec(arch="bert", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4)


def toy_data(n: int, seed: int) -> PreferenceData:
    """The chosen response has more 'good' than 'bad' words; length (in words) is random on both sides."""
    rng = np.random.default_rng(seed)
    prompts, chosen, rejected, length = [], [], [], []
    for _ in range(n):
        lengths = rng.integers(3, 9, size=2)
        good = (["good " * (L - 1) + "bad" for L in lengths[:1]]
                + ["bad " * (L - 1) + "good" for L in lengths[1:]])
        prompts.append(f"question {rng.integers(5)}")
        chosen.append(good[0])
        rejected.append(good[1])
        length.append(lengths)
    cf = [c + " good" for c in chosen]  # the same answer, one word longer
    return PreferenceData(prompts, chosen, rejected, {"length": np.array(length)},
                          counterfactuals={"length": cf})


def test_bt_train_save_load_eval(tmp_path):
    cfg = RewardTrainConfig(kind="bt", tiny_model=TINY, epochs=3, batch_size=16, lr=3e-3, max_length=32)
    model = train_reward_model(cfg, toy_data(96, 0))
    model.save(tmp_path / "bt")
    results = evaluate_reward_model(load_reward_model(tmp_path / "bt"), toy_data(40, 1))
    assert results["accuracy"] >= 0.9
    assert 0.0 <= results["ece"] <= 0.5
    assert set(results["spearman"]) == {"length"} and results["counterfactual"]["length"]["n"] == 40
    table = format_table(results)
    assert "accuracy" in table and "spearman(reward, length)" in table
    write_jsonl(tmp_path / "test.jsonl", records_of(toy_data(20, 2)))
    cli_results = rm_eval_main(str(tmp_path / "bt"), str(tmp_path / "test.jsonl"),
                               str(tmp_path / "eval.json"))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["accuracy"] == cli_results["accuracy"] >= 0.9
    assert {"length", "length_tokens", "length_chars"} <= set(saved["spearman"])


def test_causal_loss_adds_mmd_and_trains(tmp_path):
    data = toy_data(64, 0)
    cfg = RewardTrainConfig(kind="causal", tiny_model=TINY, mmd_attribute="length", mmd_num_bins=3, epochs=2,
                            lr=3e-3, max_length=32, mmd_lambda=1.0)
    model = train_reward_model(cfg, data)
    bins = np.zeros((len(data), 2), dtype=int)
    bins[::2] = 1
    loss, stats = reward_loss(model.train(), collate(model.tokenizer, data, np.arange(16), 32, bins), cfg)
    assert stats["mmd"] >= 0 and loss.item() == pytest.approx(stats["bt_loss"] + stats["mmd"], rel=1e-4)
    model.save(tmp_path / "crm")
    assert load_reward_model(tmp_path / "crm").trained_with == "causal"
    on_rep = cfg.model_copy(update={"mmd_on": "representation", "mmd_bandwidth": "median"})
    loss, stats = reward_loss(model.train(), collate(model.tokenizer, data, np.arange(16), 32, bins), on_rep)
    loss.backward()
    assert stats["mmd"] > 0 and loss.item() == pytest.approx(stats["bt_loss"] + stats["mmd"], rel=1e-4)


def test_causal_rm_with_strata_bins_and_compares_within_each_source():
    data = toy_data(64, 0)
    source = np.where(np.arange(2 * len(data)).reshape(-1, 2) % 3 == 0, "model-a", "model-b")
    data.attributes["source"] = source
    cfg = RewardTrainConfig(kind="causal", tiny_model=TINY, mmd_attribute="length", mmd_num_bins=2,
                            mmd_strata="source", mmd_lambda=1.0, mmd_reduction="mean", epochs=1, lr=3e-3,
                            max_length=32)
    bins = attribute_bins(cfg, data, None)
    # a bin id carries its stratum (sources in sorted order), its bin is one of that source's own 2 quantiles
    assert ((bins // STRATUM_STRIDE) == (source == "model-b")).all()
    assert set((bins % STRATUM_STRIDE).ravel().tolist()) == {0, 1}
    model = train_reward_model(cfg, data)
    assert model.metadata["mmd_strata"] == "source"
    with pytest.raises(ValueError, match="mmd_strata .model. is not in the data.*chosen_model and rejected_"):
        attribute_bins(cfg.model_copy(update={"mmd_strata": "model"}), data, None)


def test_multihead_encore_and_linear_head_ensemble(tmp_path):
    data = toy_data(48, 0)
    rng = np.random.default_rng(0)
    data.ratings = {"quality": np.tile([0.9, 0.1], (48, 1)), "noise": rng.uniform(size=(48, 2))}
    cfg = RewardTrainConfig(kind="multihead", tiny_model=TINY, epochs=2, lr=3e-3, max_length=32)
    model = train_reward_model(cfg, data)
    model.save(tmp_path / "mh")
    results = evaluate_reward_model(load_reward_model(tmp_path / "mh"), toy_data(16, 1))
    heads = results["heads"]
    # the peaked 'quality' ratings have lower entropy
    assert heads["quality"]["weight"] > heads["noise"]["weight"]
    assert heads["quality"]["entropy"] == pytest.approx(1.0)
    ens = RewardTrainConfig(kind="ensemble", ensemble_type="linear_heads", ensemble_size=2, tiny_model=TINY,
                            aggregation="worst_case", max_length=32, lr=3e-3)
    results = evaluate_reward_model(train_reward_model(ens, data), toy_data(16, 1))
    assert set(results["ensemble"]["member_accuracy"]) == {"member_0", "member_1"}


def test_haf_and_warm_train(tmp_path):
    data = toy_data(32, 0)
    tiny_llama = TINY.model_copy(update={"arch": "llama"})
    haf = train_reward_model(RewardTrainConfig(kind="haf", tiny_model=tiny_llama, max_length=32, lr=3e-3),
                             data)
    assert np.any(haf.score(data.prompts[:4], data.chosen[:4])["reward"] != 0.0)  # the zero-init head moved
    warm = train_reward_model(RewardTrainConfig(kind="ensemble", ensemble_type="warm", ensemble_size=2,
                                                tiny_model=TINY, max_length=32, lr=3e-3), data)
    warm.save(tmp_path / "warm")
    assert load_reward_model(tmp_path / "warm").metadata["warm_members"] == 2


def test_config_rejects_unknown_fields_and_missing_backbone():
    with pytest.raises(ValueError, match="lamda"):
        RewardTrainConfig(tiny_model=TINY, lamda=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        RewardTrainConfig()


def test_bench_names_are_checked():
    with pytest.raises(ConfigError, match="length-bias"):
        rm_bench_main("no-such-benchmark")


def test_lora_ensemble_members_are_merged_plain_models(tmp_path):
    data = toy_data(32, 0)
    cfg = RewardTrainConfig(kind="ensemble", ensemble_type="lora", ensemble_size=2, lora_r=4, tiny_model=TINY,
                            max_length=32, lr=3e-3, aggregation="uncertainty_weighted")
    model = train_reward_model(cfg, data)
    assert all(not hasattr(m.backbone, "peft_config") for m in model.members)
    model.save(tmp_path / "lora")
    scores = load_reward_model(tmp_path / "lora").score(data.prompts[:4], data.chosen[:4])
    members = np.stack([scores["member_0"], scores["member_1"]])
    np.testing.assert_allclose(scores["reward"], members.mean(0) - 0.5 * members.var(0), atol=1e-5)
