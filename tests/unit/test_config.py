"""Config: YAML + dotted overrides, validation errors that name the field, and the CLI failing before any
actor."""

from __future__ import annotations

import pytest

from alignray.cli import main
from alignray.config import apply_overrides, dump_config, load_config, parse_override
from alignray.errors import ConfigError


def test_quickstart_preset_loads_and_round_trips(tmp_path):
    cfg = load_config()
    assert cfg.algo.name == "grpo" and cfg.learner.num_ranks == 2 and cfg.rollout.num_workers == 1
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_dotted_overrides_are_yaml_typed():
    cfg = load_config(None, ["rollout.num_workers=2", "algo.name=rloo", "algo.tis_cap=2.5",
                             "rollout.stop_token_ids=[5, 6]"])
    assert cfg.rollout.num_workers == 2 and cfg.algo.name == "rloo"
    assert cfg.algo.tis_cap == 2.5 and cfg.rollout.stop_token_ids == [5, 6]
    assert parse_override("a.b=x") == (["a", "b"], "x")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("override, needle", [
    ("rollout.bogus=1", "rollout.bogus: unknown field; allowed: engine"),
    ("algo.name=foo", "algo.name: Input should be 'grpo'"),
    ("learner.zero_stage=4", "learner.zero_stage: Input should be less than or equal to 3 (got 4)"),
    ("rollout.num_workers=0", "rollout.num_workers"),
    ("reward.on_error=ignore", "reward.on_error"),
])
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="samples_per_prompt must be at least 2"):
        load_config(None, ["rollout.samples_per_prompt=1"])
    assert load_config(None, ["rollout.samples_per_prompt=1",
                              "algo.name=reinforce_pp"]).algo.name == "reinforce_pp"


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_rejects_bad_config_before_any_actor(capsys):
    import ray

    ray_was_up = ray.is_initialized()
    assert main(["train", "learner.zero_stage=9"]) == 2
    err = capsys.readouterr().err
    assert "alignray: error: invalid config" in err and "learner.zero_stage" in err
    assert "Traceback" not in err
    assert ray.is_initialized() == ray_was_up  # failed before connecting to (or starting) Ray


def test_cli_config_prints_resolved(capsys):
    assert main(["config", "algo.name=ppo"]) == 0
    assert "name: ppo" in capsys.readouterr().out
