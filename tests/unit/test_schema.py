"""Arrow schemas at the boundaries, and the zero-copy path from an Arrow column to a torch tensor."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch

from alignray.errors import SchemaError
from alignray.learner.batch import pad_ragged, ragged_to_torch, sequences_from_batch
from alignray.rollout.engine import Completion, build_rollout_batch
from alignray.schema import TOKENS, check_batch, list_array


def prompt_batch() -> pa.RecordBatch:
    return pa.record_batch({"prompt_id": pa.array([7, 9], pa.int64()), "prompt": ["ab", "c"],
                            "prompt_tokens": list_array([[3, 4], [5]], pa.int32())})


def rollout_batch() -> pa.RecordBatch:
    comps = [[Completion(np.array([10, 11, 2], np.int32), np.array([-1, -2, -3], np.float32), "stop"),
              Completion(np.array([12], np.int32), np.array([-0.5], np.float32), "length")],
             [Completion(np.array([13, 14], np.int32), np.array([-1.5, -2.5], np.float32), "length"),
              Completion(np.array([2], np.int32), np.array([-0.1], np.float32), "stop")]]
    return build_rollout_batch(prompt_batch(), comps, version=5, decode=lambda t: "x" * len(t))


def test_rollout_batch_rows_carry_ids_and_version():
    batch = rollout_batch()
    assert batch.num_rows == 4
    assert batch.column("prompt_id").to_pylist() == [7, 7, 9, 9]
    assert batch.column("sample_index").to_pylist() == [0, 1, 0, 1]
    assert batch.column("policy_version").to_pylist() == [5] * 4
    assert batch.schema.field("response_tokens").type == TOKENS
    assert batch.schema.field("response_logprobs").type == pa.list_(pa.float32())


def test_check_batch_names_the_column():
    batch = rollout_batch()
    with pytest.raises(SchemaError, match="missing column 'reward'"):
        check_batch(batch, "scored")
    bad = batch.set_column(batch.schema.get_field_index("response_tokens"), "response_tokens",
                           pa.array([[1], [2], [3], [4]], pa.list_(pa.int64())))
    with pytest.raises(SchemaError, match="column 'response_tokens' has type list<item: int64>"):
        check_batch(bad, "rollout", "test")
    scored = batch.append_column("reward", pa.array([1, 2, 3, 4], pa.float32()))
    check_batch(scored.append_column("reward_x", pa.array([0.0] * 4, pa.float32())), "scored")
    with pytest.raises(SchemaError, match="unexpected column 'extra'"):
        check_batch(scored.append_column("extra", pa.array([0] * 4)), "scored")


def test_list_column_to_torch_is_zero_copy():
    batch = rollout_batch()
    column = batch.column("response_tokens")
    flat, offsets = ragged_to_torch(column)
    values_buffer = column.values.buffers()[1]
    assert flat.data_ptr() == values_buffer.address  # the tensor aliases Arrow's memory: no copy
    assert flat.tolist() == [10, 11, 2, 12, 13, 14, 2] and offsets.tolist() == [0, 3, 4, 6, 7]
    padded, mask = pad_ragged(flat, offsets, pad_value=0)
    assert padded.tolist() == [[10, 11, 2], [12, 0, 0], [13, 14, 0], [2, 0, 0]]
    assert mask.sum().item() == 7


def test_zero_copy_after_the_object_store(ray_cluster):
    """A batch fetched from Ray's object store is mapped from shared memory: two reads see the same bytes, and
    the torch tensor aliases them (a copy anywhere would give a new address)."""
    rows = 2048
    tokens = list_array([np.arange(128, dtype=np.int32)] * rows, pa.int32())
    batch = pa.record_batch({"prompt_id": pa.array(np.arange(rows), pa.int64()), "prompt": ["p"] * rows,
                             "prompt_tokens": tokens})
    ref = ray.put(batch)
    first, second = ray.get(ref), ray.get(ref)
    address = first.column("prompt_tokens").values.buffers()[1].address
    assert second.column("prompt_tokens").values.buffers()[1].address == address
    flat, offsets = ragged_to_torch(first.column("prompt_tokens"))
    assert flat.data_ptr() == address and offsets[-1].item() == rows * 128


def test_sliced_column_offsets_are_rebased():
    flat, offsets = ragged_to_torch(rollout_batch().slice(2, 2).column("response_tokens"))
    assert flat.tolist() == [13, 14, 2] and offsets.tolist() == [0, 2, 3]


def test_sequences_layout_prompt_then_response():
    batch = rollout_batch().append_column("reward", pa.array([1, 0, 0, 1], pa.float32()))
    seq = sequences_from_batch(batch, pad_token_id=0)
    assert seq.input_ids.tolist()[0] == [3, 4, 10, 11, 2]
    assert seq.input_ids.tolist()[2] == [5, 13, 14, 0, 0]
    # response token t of row b is predicted by logits at prompt_len-1+t
    assert seq.logit_index.tolist()[0] == [1, 2, 3] and seq.logit_index.tolist()[2] == [0, 1, 2]
    assert seq.group_ids.tolist() == [0, 0, 1, 1]
    assert torch.equal(seq.response_mask.sum(1), torch.tensor([3.0, 1.0, 2.0, 1.0]))
