"""Prompt files in every format: JSONL, Parquet, saved `datasets` folders; chat rows rendered with a chat
template.

The tokenizer with a template is built here (the byte-level tokenizer plus a small Jinja template) and saved,
so it loads through `model.tokenizer` the way a user's model folder does.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignray.config_sections import DataConfig, ModelConfig
from alignray.data import load_prompts
from alignray.errors import DataError
from alignray.tokenizer import build_byte_tokenizer, load_tokenizer

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
RENDERED = "<|system|>Be brief.\n<|user|>Name a colour.\n<|assistant|>"


@pytest.fixture(scope="module")
def templated(tmp_path_factory):
    """A tokenizer folder carrying a chat template, loaded back as `model.tokenizer`."""
    folder = tmp_path_factory.mktemp("tok")
    tok = build_byte_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    loaded = load_tokenizer(ModelConfig(tokenizer=str(folder)))
    assert loaded.chat_template == TEMPLATE
    return loaded


def texts(prompts) -> list[str]:
    return prompts.table.column("prompt").to_pylist()


def test_jsonl_chat_rows_use_the_tokenizers_template(tmp_path, templated):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"prompt": "plain text"}) + "\n")
    prompts = load_prompts(DataConfig(prompts=str(path)), templated)
    assert texts(prompts) == [RENDERED, "plain text"]  # plain prompts stay as they are
    tokens = prompts.table.column("prompt_tokens")[0].as_py()
    assert templated.decode(tokens) == RENDERED


def test_template_setting_none_path_and_auto_without_template(tmp_path, templated):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    plain = "system: Be brief.\nuser: Name a colour.\nassistant:"
    assert texts(load_prompts(DataConfig(prompts=str(path), chat_template="none"), templated)) == [plain]
    assert texts(load_prompts(DataConfig(prompts=str(path)), build_byte_tokenizer())) == [plain]
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}>")
    assert texts(load_prompts(DataConfig(prompts=str(path), chat_template=str(jinja)), templated)) == [
        "[Be brief.][Name a colour.]>"]
    with pytest.raises(DataError, match="data.chat_template: .*nope.jinja: no such file"):
        load_prompts(DataConfig(prompts=str(path), chat_template=str(tmp_path / "nope.jinja")), templated)


def test_parquet_chat_and_plain_rows_name_file_and_row(tmp_path, templated):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"messages": [CHAT, [{"role": "user", "content": "Hi"}]]}), path)
    prompts = load_prompts(DataConfig(prompts=str(path)), templated)
    assert texts(prompts) == [RENDERED, "<|user|>Hi\n<|assistant|>"]
    assert prompts.table.column("prompt_id").to_pylist() == [0, 1]  # row indices

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["one", "two", "  "]}), bad)
    with pytest.raises(DataError, match=rf"^{bad}: row 2: field 'prompt' is empty"):
        load_prompts(DataConfig(prompts=str(bad)), templated)
    kept = load_prompts(DataConfig(prompts=str(bad), on_bad_row="skip"), templated)
    assert kept.table.column("prompt_id").to_pylist() == [0, 1] and dict(kept.skipped) == {"empty_prompt": 1}


def test_bad_messages_and_a_template_that_raises_name_the_row(tmp_path, templated):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n"
                    + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: field 'messages' message 0: expected {{role: string, "):
        load_prompts(DataConfig(prompts=str(path)), templated)
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% if messages[0]['role'] != 'user' %}{{ raise_exception('must start with user') }}"
                      "{% endif %}{{ messages[0]['content'] }}")
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    with pytest.raises(DataError,
                       match=rf"{path}:1: the chat template failed on field 'messages': .*must start"):
        load_prompts(DataConfig(prompts=str(path), chat_template=str(strict)), templated)
    blank = tmp_path / "blank.jinja"
    blank.write_text("{% for m in messages %} {% endfor %}")
    with pytest.raises(DataError, match=rf"{path}:1: the chat template rendered field 'messages' empty"):
        load_prompts(DataConfig(prompts=str(path), chat_template=str(blank)), templated)


def test_no_usable_column(tmp_path, templated):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["a"]}), path)
    with pytest.raises(DataError, match=r"no column 'prompt' or 'messages' \(columns: \['question'\]\)"):
        load_prompts(DataConfig(prompts=str(path)), templated)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + b"\x00" * 16)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_prompts(DataConfig(prompts=str(broken)), templated)


def test_saved_datasets_folder_and_split(tmp_path, templated):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"messages": [CHAT, CHAT], "id": [7, 8]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert texts(load_prompts(DataConfig(prompts=str(tmp_path / "ds")), templated)) == [RENDERED, RENDERED]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]}),
                                 "test": datasets.Dataset.from_dict({"prompt": ["z"]})})
    both.save_to_disk(str(tmp_path / "dd"))
    assert texts(load_prompts(DataConfig(prompts=str(tmp_path / "dd")), templated)) == ["a", "b", "c"]
    assert texts(load_prompts(DataConfig(prompts=str(tmp_path / "dd"), split="test"), templated)) == ["z"]
    with pytest.raises(DataError, match=r"data.split: .* has the splits \['test', 'train'\], not 'dev'"):
        load_prompts(DataConfig(prompts=str(tmp_path / "dd"), split="dev"), templated)
