import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from alignray.errors import DataError
from alignray.rm.backbones import build_word_tokenizer
from alignray.rm.preference_data import load_preferences

ROWS = [
    {"prompt": "p1", "chosen": "a b c", "rejected": "a", "chosen_polite": 1, "rejected_polite": 0,
     "chosen_ratings": {"safe": 0.9, "helpful": 0.7}, "rejected_ratings": {"safe": 0.2, "helpful": 0.4},
     "counterfactual": {"polite": "a b"}},
    {"prompt": "p2", "chosen": "x", "rejected": "y z", "chosen_polite": 0, "rejected_polite": 1,
     "chosen_ratings": {"safe": 0.5, "helpful": 0.6}, "rejected_ratings": {"helpful": 0.1, "safe": 0.3}},
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_round_trip_with_attributes_ratings_and_counterfactuals(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    tokenizer = build_word_tokenizer(["a b c x y z"])
    data = load_preferences(tmp_path / "d.jsonl", computed=["length_words", "length_tokens"],
                            tokenizer=tokenizer)
    assert len(data) == 2 and data.prompts == ["p1", "p2"]
    assert data.attributes["polite"].tolist() == [[1, 0], [0, 1]]
    assert data.attributes["length_words"].tolist() == [[3.0, 1.0], [1.0, 2.0]]
    assert data.attributes["length_tokens"].tolist() == [[3.0, 1.0], [1.0, 2.0]]
    assert data.rule_names == ["safe", "helpful"]
    np.testing.assert_allclose(data.rating_matrix(1), [[0.2, 0.4], [0.3, 0.1]])
    assert data.counterfactuals == {"polite": ["a b", None]}
    sub = data.subset([1])
    assert sub.chosen == ["x"] and sub.ratings["safe"].tolist() == [[0.5, 0.3]]


def test_parquet_loads_like_jsonl(tmp_path):
    rows = [{k: v for k, v in r.items() if "ratings" not in k and k != "counterfactual"} for r in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    data = load_preferences(tmp_path / "d.parquet")
    assert data.rejected == ["a", "y z"] and data.attributes["polite"].tolist() == [[1, 0], [0, 1]]


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), "", json.dumps({"prompt": "p",
                                                                                     "chosen": "c"})])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: missing field 'rejected'"):
        load_preferences(path)


def test_wrong_type_and_bad_json_name_the_line(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"prompt": "p", "chosen": 3, "rejected": "r"})])
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'chosen' must be a string, got int"):
        load_preferences(path)
    path = write_lines(tmp_path / "j.jsonl", [json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}),
                                              "{oops"])
    with pytest.raises(DataError, match=r"j\.jsonl:2: not valid JSON"):
        load_preferences(path)


def test_attribute_and_rating_errors(tmp_path):
    second = dict(ROWS[1])
    del second["rejected_polite"]
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(ROWS[0]), json.dumps(second)])
    with pytest.raises(DataError, match=r"a\.jsonl:2: missing field 'rejected_polite'"):
        load_preferences(path)
    second = dict(ROWS[1], chosen_ratings={"safe": 0.5})
    path = write_lines(tmp_path / "r.jsonl", [json.dumps(ROWS[0]), json.dumps(second)])
    with pytest.raises(DataError, match=r"r\.jsonl:2: field 'chosen_ratings' has rules"):
        load_preferences(path)
    second = dict(ROWS[1], rejected_ratings={"safe": "high", "helpful": 0.1})
    path = write_lines(tmp_path / "n.jsonl", [json.dumps(ROWS[0]), json.dumps(second)])
    with pytest.raises(DataError,
                       match=r"n\.jsonl:2: field 'rejected_ratings\.safe' must be a finite number"):
        load_preferences(path)


def test_parquet_errors_name_the_row(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "c", "rejected": None}]),
                   tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x\.parquet row 0: field 'rejected' must be a string"):
        load_preferences(tmp_path / "x.parquet")


def test_missing_file_empty_file_and_computed_attribute_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no preference rows"):
        load_preferences(write_lines(tmp_path / "e.jsonl", [""]))
    write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(DataError, match="needs a tokenizer"):
        load_preferences(tmp_path / "ok.jsonl", computed=["length_tokens"])
    with pytest.raises(DataError, match="unknown computed attribute 'width'"):
        load_preferences(tmp_path / "ok.jsonl", computed=["width"])


def test_hub_name_fails_clearly_offline():
    with pytest.raises(DataError, match="no-such-org/no-such-dataset"):
        load_preferences("no-such-org/no-such-dataset")
