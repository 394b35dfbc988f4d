"""Prompt files are validated at the edge: errors name file and line, or rows are skipped and counted by
policy."""

from __future__ import annotations

import json

import pytest

from alignray.config_sections import DataConfig
from alignray.data import PromptSampler, load_prompts
from alignray.driver.ledger import PromptLedger
from alignray.errors import DataError
from alignray.tokenizer import build_byte_tokenizer

TOK = build_byte_tokenizer()


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


GOOD = json.dumps({"prompt": "hello"})


@pytest.mark.parametrize("bad_line, needle", [
    ('{"prompt": "unterminated', "not valid JSON"),
    (json.dumps({"text": "x"}), "missing field 'prompt'"),
    (json.dumps({"prompt": "   "}), "field 'prompt' is empty"),
    (json.dumps({"prompt": 3}), "field 'prompt' must be a string"),
    (json.dumps(["prompt"]), "expected a JSON object"),
    (json.dumps({"prompt": "x" * 100}), "100 tokens, longer than data.max_prompt_tokens=64"),
])
def test_bad_row_error_names_file_and_line(tmp_path, bad_line, needle):
    path = write_lines(tmp_path / "p.jsonl", [GOOD, GOOD, bad_line])
    with pytest.raises(DataError) as err:
        load_prompts(DataConfig(prompts=path), TOK)
    assert f"{path}:3: " in str(err.value) and needle in str(err.value)


def test_skip_policy_counts_and_keeps_line_ids(tmp_path):
    lines = [GOOD, "{oops", json.dumps({"prompt": ""}), json.dumps({"prompt": "world"}), json.dumps({"q": 1})]
    prompts = load_prompts(DataConfig(prompts=write_lines(tmp_path / "p.jsonl", lines), on_bad_row="skip"),
                           TOK)
    assert len(prompts) == 2
    assert prompts.table.column("prompt_id").to_pylist() == [1, 4]  # ids are line numbers
    assert dict(prompts.skipped) == {"bad_json": 1, "empty_prompt": 1, "missing_field": 1}


def test_all_rows_bad_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="no usable prompts"):
        load_prompts(DataConfig(prompts=write_lines(tmp_path / "p.jsonl", ["{"]), on_bad_row="skip"), TOK)
    with pytest.raises(DataError, match="file not found"):
        load_prompts(DataConfig(prompts=str(tmp_path / "none.jsonl")), TOK)


def test_builtin_prompts_tokenized():
    prompts = load_prompts(DataConfig(), TOK)
    assert len(prompts) == 100
    batch = prompts.batch([0, 5])
    assert batch.num_rows == 2 and len(batch.column("prompt_tokens")[0]) > 0


def test_sampler_epochs_and_state():
    sampler = PromptSampler(5, seed=1, shuffle=True)
    first = sampler.take(7)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4] and sampler.epoch == 1
    state = sampler.state_dict()
    again = PromptSampler(5, seed=1, shuffle=True)
    again.load_state_dict(state)
    assert again.take(4) == sampler.take(4)


def test_ledger_requeues_lost_prompts_first():
    ledger = PromptLedger(PromptSampler(10, seed=0, shuffle=False))
    a = ledger.dispatch(3)
    b = ledger.dispatch(3)
    assert a == [0, 1, 2] and b == [3, 4, 5]
    ledger.requeue(a)
    assert ledger.dispatch(4) == [0, 1, 2, 6]
    ledger.consume(b)
    assert ledger.counts["consumed"] == 3 and set(ledger.in_flight) == {0, 1, 2, 6}
    state = ledger.state_dict()  # in-flight prompts are saved as not yet consumed
    fresh = PromptLedger(PromptSampler(10, seed=0, shuffle=False))
    fresh.load_state_dict(state)
    assert fresh.dispatch(5) == [0, 1, 2, 6, 7]


def test_ledger_counts_a_prompt_out_twice():
    ledger = PromptLedger(PromptSampler(2, seed=0, shuffle=False))
    first, second = ledger.dispatch(2), ledger.dispatch(2)  # the second epoch starts while the first is out
    assert first == second == [0, 1] and ledger.in_flight == {0: 2, 1: 2}
    ledger.consume(first)
    assert ledger.in_flight == {0: 1, 1: 1}
    ledger.consume(second)
    assert not ledger.in_flight and ledger.counts["consumed"] == 4


def test_cli_reports_bad_prompt_file_before_any_actor(tmp_path, capsys):
    import ray

    from alignray.cli import main

    ray_was_up = ray.is_initialized()
    path = write_lines(tmp_path / "p.jsonl", [GOOD, json.dumps({"prompt": ""})])
    assert main(["train", "--run-dir", str(tmp_path / "run"), f"data.prompts={path}"]) == 2
    err = capsys.readouterr().err
    assert f"alignray: error: {path}:2: field 'prompt' is empty" in err and "Traceback" not in err
    assert ray.is_initialized() == ray_was_up  # failed before connecting to (or starting) Ray
