import json

import numpy as np
import pytest
import torch

from alignray.rewards.encoding import encode_pairs
from alignray.rewards.encore import fit_encore
from alignray.rewards.ensemble_models import EnsembleRewardModel, warm_model
from alignray.rewards.haf_model import HafRewardModel
from alignray.rewards.heads_model import HeadsRewardModel
from alignray.rewards.loading import load_reward_model
from alignray.rewards.models import ScalarRewardModel
from alignray.rm.backbones import TinyModelSpec, build_word_tokenizer, new_backbone

WORDS = "the cat sat on a mat and dog ran far away good bad answer question please"
PROMPTS = ["question the cat", "please answer", "the dog", "a question"]
RESPONSES = ["good answer the cat sat", "bad", "the dog ran far far away", "a mat"]
TINY = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([WORDS])


def scalar(tokenizer, seed=0, arch="llama"):
    torch.manual_seed(seed)
    spec = TINY.model_copy(update={"arch": arch})
    return ScalarRewardModel(new_backbone("sequence_classification", None, spec, tokenizer), tokenizer, 64)


def test_encode_pairs_layout_and_truncation(tokenizer):
    batch = encode_pairs(tokenizer, ["the cat"], ["sat on"], max_length=16)
    ids = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert ids == ["[BOS]", "the", "cat", "[SEP]", "sat", "on", "[EOS]"]
    assert batch["response_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    # budget 8: 4 prompt + 4 response
    long = encode_pairs(tokenizer, ["the " * 20], ["cat " * 20], max_length=11)
    assert long["input_ids"].shape[1] == 11 and long["response_mask"].sum().item() == 5


def test_scalar_round_trip_and_plain_hf_directory(tokenizer, tmp_path):
    model = scalar(tokenizer)
    scores = model.score(PROMPTS, RESPONSES, batch_size=3)
    assert set(scores) == {"reward"} and scores["reward"].shape == (4,)
    model.save(tmp_path / "rm")
    loaded = load_reward_model(tmp_path / "rm")
    assert isinstance(loaded, ScalarRewardModel) and loaded.trained_with == "bt"
    np.testing.assert_allclose(loaded.score(PROMPTS, RESPONSES)["reward"], scores["reward"], atol=1e-5)
    model.backbone.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    plain = load_reward_model(tmp_path / "plain")
    np.testing.assert_allclose(plain.score(PROMPTS, RESPONSES)["reward"], scores["reward"], atol=1e-5)


def test_scores_do_not_depend_on_batch_padding(tokenizer):
    model = scalar(tokenizer)
    together = model.score(PROMPTS, RESPONSES, batch_size=4)["reward"]
    alone = np.concatenate([model.score([p], [r])["reward"] for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_multihead_encore_columns_and_round_trip(tokenizer, tmp_path):
    torch.manual_seed(0)
    trunk = new_backbone("base", None, TINY.model_copy(update={"arch": "bert"}), tokenizer)
    model = HeadsRewardModel(trunk, tokenizer, ["helpful", "safe"], role="multihead", max_length=64)
    ratings = np.array([[0.1, 0.9], [0.9, 0.9], [0.5, 0.8], [0.3, 0.95]])
    model.set_encore(fit_encore(ratings, ["helpful", "safe"]))
    scores = model.score(PROMPTS, RESPONSES)
    assert set(scores) == {"reward", "head_helpful", "head_safe", "weight_helpful", "weight_safe"}
    w = model.encore.weights
    np.testing.assert_allclose(scores["weight_safe"], w[1])
    np.testing.assert_allclose(scores["reward"], w[0] * scores["head_helpful"] + w[1] * scores["head_safe"],
                               atol=1e-6)
    model.save(tmp_path / "mh")
    loaded = load_reward_model(tmp_path / "mh")
    assert loaded.encore == model.encore and loaded.pooling == "mean"
    np.testing.assert_allclose(loaded.score(PROMPTS, RESPONSES)["reward"], scores["reward"], atol=1e-5)


def test_linear_head_ensemble_worst_case(tokenizer, tmp_path):
    torch.manual_seed(0)
    trunk = new_backbone("base", None, TINY, tokenizer)
    model = HeadsRewardModel(trunk, tokenizer, ["0", "1", "2"], role="ensemble", aggregation="worst_case")
    scores = model.score(PROMPTS, RESPONSES)
    members = np.stack([scores[f"member_{i}"] for i in range(3)])
    np.testing.assert_allclose(scores["reward"], members.min(0), atol=1e-6)
    np.testing.assert_allclose(scores["std"], members.std(0), atol=1e-5)
    model.save(tmp_path / "lh")
    np.testing.assert_allclose(load_reward_model(tmp_path / "lh").score(PROMPTS, RESPONSES)["min"],
                               scores["min"], atol=1e-5)


def test_independent_ensemble_lcb_and_round_trip(tokenizer, tmp_path):
    model = EnsembleRewardModel([scalar(tokenizer, 1), scalar(tokenizer, 2)], aggregation="lcb", coef=1.0)
    scores = model.score(PROMPTS, RESPONSES)
    members = np.stack([scores["member_0"], scores["member_1"]])
    np.testing.assert_allclose(scores["reward"], members.mean(0) - members.std(0), atol=1e-6)
    assert {"mean", "std", "min"} <= set(scores)
    model.save(tmp_path / "ens")
    config = json.loads((tmp_path / "ens" / "alignray_rm.json").read_text())
    assert config["aggregation"] == "lcb" and config["members"] == ["member_0", "member_1"]
    loaded = load_reward_model(tmp_path / "ens")
    np.testing.assert_allclose(loaded.score(PROMPTS, RESPONSES)["reward"], scores["reward"], atol=1e-5)


def test_warm_averages_members_into_one_scalar_model(tokenizer, tmp_path):
    a, b = scalar(tokenizer, 0), scalar(tokenizer, 0)
    with torch.no_grad():
        for p in b.backbone.parameters():
            p.add_(0.5)
    merged = warm_model([a, b])
    name, param = next(iter(merged.backbone.named_parameters()))
    expected = (dict(a.backbone.named_parameters())[name] + dict(b.backbone.named_parameters())[name]) / 2
    assert torch.allclose(param, expected)
    merged.save(tmp_path / "warm")
    loaded = load_reward_model(tmp_path / "warm")
    assert isinstance(loaded, ScalarRewardModel) and loaded.trained_with == "warm"
    assert loaded.metadata["warm_members"] == 2


def test_haf_reward_head_starts_at_zero_and_reference_matches(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = HafRewardModel(new_backbone("causal_lm", None, TINY, tokenizer), tokenizer, 64)
    assert np.all(model.score(PROMPTS, RESPONSES)["reward"] == 0.0)
    batch = model.encode(PROMPTS, RESPONSES)
    out = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    ref = model(batch["input_ids"], batch["attention_mask"], batch["response_mask"], reference=True)
    assert torch.allclose(out["logp"], ref["ref_logp"], atol=1e-5) and torch.all(out["logp"] < 0)
    assert not ref["ref_logp"].requires_grad
    torch.nn.init.normal_(model.reward_head.weight)
    scores = model.score(PROMPTS, RESPONSES)["reward"]
    model.save(tmp_path / "haf")
    np.testing.assert_allclose(load_reward_model(tmp_path / "haf").score(PROMPTS, RESPONSES)["reward"],
                               scores, atol=1e-5)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a reward model"):
        load_reward_model(tmp_path)
    (tmp_path / "alignray_rm.json").write_text(json.dumps({"kind": "magic"}))
    with pytest.raises(ValueError, match="field 'kind'"):
        load_reward_model(tmp_path)


@pytest.mark.parametrize("combine", ["mean", "lcb", "wco", "uwo"])
def test_a_scorer_combines_separately_trained_members(tokenizer, tmp_path, combine):
    """`reward.scorers[i].ensemble`: members saved apart (e.g. rm train runs with different seeds) combined
    per sample in the reward worker; the members' spread is a logged column."""
    from alignray.config_sections import ScorerConfig
    from alignray.rewards.scorers import build_scorers

    members = [scalar(tokenizer, seed) for seed in (1, 2, 3)]
    for i, member in enumerate(members):
        member.save(tmp_path / f"m{i}")
    paths = [str(tmp_path / f"m{i}") for i in range(3)]
    cfg = ScorerConfig(name="rm", type="model", ensemble={"members": paths, "combine": combine})
    (scorer,) = build_scorers([cfg])
    result = scorer.score(PROMPTS, RESPONSES)
    r = np.stack([m.score(PROMPTS, RESPONSES)["reward"] for m in members])
    expected = {"mean": r.mean(0), "lcb": r.mean(0) - r.std(0), "wco": r.min(0),
                "uwo": r.mean(0) - 0.5 * r.var(0)}
    np.testing.assert_allclose(result.columns["reward"], expected[combine], atol=1e-5)
    np.testing.assert_allclose(result.columns["std"], r.std(0), atol=1e-5)


def test_a_model_scorer_needs_a_path_or_an_ensemble():
    from pydantic import ValidationError

    from alignray.config_sections import ScorerConfig

    with pytest.raises(ValidationError, match="give exactly one of 'path' and 'ensemble'"):
        ScorerConfig(name="rm", type="model")
    with pytest.raises(ValidationError, match="members"):
        ScorerConfig(name="rm", type="model", ensemble={"members": ["only-one"]})
