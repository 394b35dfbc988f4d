"""The environment side of multi-turn episodes: the calculator's parser and rewards (by hand), loading a
user's environment class, the config fields and their checks before any actor starts, and the episode
reward component."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from alignray.config import load_config
from alignray.data import load_prompts
from alignray.driver.preflight import check_environment
from alignray.envs.api import resolve_env_class
from alignray.envs.calc import CalcError, CalculatorEnv, calc_prompts, evaluate, find_expression, show
from alignray.errors import ConfigError, RewardError
from alignray.rewards.scorers import EnvironmentScorer, score_batch
from alignray.schema import list_array
from alignray.tokenizer import build_byte_tokenizer


@pytest.mark.parametrize("text, value", [
    ("1+2*3", 7), ("(1+2)*3", 9), ("-4/2", -2), ("2*-3", -6), ("2--3", 5), (" 7 - 2 - 1 ", 4),
    ("10/4", 2.5), ("((2))", 2), ("3.5*2", 7),
])
def test_the_calculator_evaluates_arithmetic(text, value):
    assert evaluate(text) == value


@pytest.mark.parametrize("text", ["", "1+", "abc", "__import__('os')", "2**10", "1/0", "(1+2", "1)", "9" * 70,
                                  "1e9999"])
def test_the_calculator_refuses_anything_else(text):
    with pytest.raises(CalcError):
        evaluate(text)


def test_show_and_find_expression():
    assert (show(12.0), show(1 / 3), show(-2.0)) == ("12", "0.333333", "-2")
    assert find_expression("What is 17 + 25? Use <calc>...</calc>.") == "17 + 25"
    assert find_expression("no digits here...") is None


def test_calculator_rewards_by_hand():
    env = CalculatorEnv()
    assert env.reset({"prompt": "What is 51 - 7? Use <calc>...</calc>."}).startswith("What is")
    assert env.target == 44
    # a <calc> call that evaluates: the whole tool reward 0.5
    assert env.step("ok <calc>51-7</calc>") == ("<result>44</result>", 0.5, False)
    # the answer's first number is the question's value: the whole answer reward 1
    assert env.step("so 44.") == (None, 1.0, True)
    env.reset({"prompt": "What is 51 - 7?"})
    # no call: tool_weight 0.5 × the share of arithmetic characters (2 of "a1+b") = 0.25; "1+" does not parse
    assert env.step("a1+b") == ("<result>error</result>", 0.25, False)
    assert env.step("x43y") == (None, 0.25, True)  # wrong: 0.5 × digit share 2/4


def test_builtin_calc_prompts_fit_and_are_questions():
    prompts = calc_prompts()
    assert len(prompts) == 100 and prompts == calc_prompts()  # deterministic
    cfg = load_config(None, ["data.prompts=builtin:calc", "rollout.env=calc", "reward.scorers=[]"])
    table = load_prompts(cfg.data, build_byte_tokenizer()).table
    assert table.num_rows == 100 and table.column("prompt_id").to_pylist()[:2] == [1, 2]
    assert all(evaluate(find_expression(p.split("?")[0])) is not None for p in prompts)


def test_the_data_rows_other_fields_travel_with_episode_prompts(tmp_path):
    import json

    import pyarrow.parquet as pq

    from alignray.config_sections import DataConfig

    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "2+2?", "answer": 4, "tags": ["a"]}) + "\n")
    pq.write_table(pa.table({"prompt": ["3*3?"], "answer": [9], "source": ["x"]}), tmp_path / "p.parquet")
    tok = build_byte_tokenizer()
    for name, want in (("p.jsonl", {"answer": 4, "tags": ["a"]}),
                       ("p.parquet", {"answer": 9, "source": "x"})):
        cfg = DataConfig(prompts=str(tmp_path / name))
        assert "fields" not in load_prompts(cfg, tok).table.column_names  # one-turn runs: as before
        prompts = load_prompts(cfg, tok, keep_fields=True)
        assert json.loads(prompts.batch([0]).column("fields")[0].as_py()) == want  # check_batch passes it


def test_episode_fields_and_their_checks():
    cfg = load_config(None, ["rollout.env=calc", "rollout.max_turns=3", "reward.scorers=[]",
                             "rollout.max_new_tokens=10"])
    assert cfg.rollout.episode_tokens == 60 and cfg.rollout.policy_tokens == 30
    assert cfg.rollout.env_reward_weight == 1.0
    cfg = load_config(None, ["rollout.env=calc", "rollout.max_episode_tokens=20"])
    assert cfg.rollout.episode_tokens == 20 and cfg.rollout.policy_tokens == 20
    # overlong shaping's L_max is the episode's budget (which counts observation tokens, as |y| does), so a
    # buffer longer than one turn's max_new_tokens is fine; past the budget it is refused, naming it
    episodes = ["rollout.env=calc", "rollout.max_turns=3", "rollout.max_new_tokens=10",
                "algo.overlong.mode=penalty"]
    assert load_config(None, [*episodes, "algo.overlong.buffer=40"]).algo.overlong.buffer == 40
    with pytest.raises(ConfigError, match=r"buffer must be 1 … the episode's token budget \(60\)"):
        load_config(None, [*episodes, "algo.overlong.buffer=61"])
    plain = load_config(None, [])
    assert (plain.rollout.episode_tokens, plain.rollout.policy_tokens, plain.rollout.env_reward_weight) == \
        (32, 32, None)
    for overrides, message in [
        (["rollout.max_turns=2"], "rollout.max_turns=2 needs an environment"),
        (["reward.scorers=[]"], "reward.scorers is empty"),
        (["rollout.env=not a spec"], "give 'package.module:Class' or a built-in"),
        (["rollout.env=calc", "reward.scorers=[{name: env, function: vowel_ratio}]"], "the name 'env'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides)


def test_a_users_environment_is_checked_before_any_actor(tmp_path, monkeypatch):
    (tmp_path / "envmod.py").write_text("class Good:\n    def reset(self, row): return row['prompt']\n"
                                        "    def step(self, text): return None, 0.0, True\n"
                                        "class NoStep:\n    def reset(self, row): return ''\n")
    (tmp_path / "brokenenv.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ok = load_config(None, ["rollout.env=envmod:Good"])
    check_environment(ok)
    assert resolve_env_class("envmod:Good").__name__ == "Good"
    for spec, message in [("envmod:NoStep", "class NoStep has no step method"),
                          ("envmod:Missing", "envmod has no class 'Missing'"),
                          ("brokenenv:Env", "module brokenenv does not import: ModuleNotFoundError")]:
        with pytest.raises(ConfigError, match=message):
            check_environment(load_config(None, [f"rollout.env={spec}"]))
    check_environment(load_config(None, ["rollout.env=only_on_the_workers:Env"]))  # left to the workers


def test_the_episode_reward_is_the_sum_of_its_turns_weighted():
    batch = pa.record_batch({
        "prompt_id": pa.array([1, 1, 2], pa.int64()), "prompt": ["a", "a", "b"],
        "prompt_tokens": list_array([[3], [3], [4]], pa.int32()),
        "sample_index": pa.array([0, 1, 0], pa.int32()),
        "response": ["x", "yy", ""], "response_tokens": list_array([[5], [6, 7], []], pa.int32()),
        "response_logprobs": list_array([[-1.0], [-1.0, 0.0], []], pa.float32()),
        "policy_version": pa.array([0, 0, 0], pa.int64()), "finish_reason": ["stop", "turns", "error"],
        "loss_mask": list_array([[1], [1, 0], []], pa.int8()), "num_turns": pa.array([1, 2, 0], pa.int32()),
        "turn_rewards": list_array([[0.5], [0.25, 1.0], []], pa.float32()),
        "env_error": pa.array([None, None, "environment 'm:E' reset raised KeyError: 'x'"]),
    })
    scored, stats = score_batch(batch, [EnvironmentScorer(2.0)], "quarantine")
    assert scored.column("reward_env").to_pylist() == [0.5, 1.25]
    assert scored.column("reward").to_pylist() == [1.0, 2.5]  # weight 2
    assert stats["quarantined"] == ["prompt_id=2 sample_index=0: reward 'env' environment 'm:E' reset raised "
                                    "KeyError: 'x'"]
    assert (stats["episode/turns"], stats["episode/policy_tokens"]) == (3.0, 2.0)
    with pytest.raises(RewardError, match="reward failed for prompt_id=2 sample_index=0: reward 'env'"):
        score_batch(batch, [EnvironmentScorer(1.0)], "fail")
    assert np.isclose(stats["reward/env/sum"], 1.75)
