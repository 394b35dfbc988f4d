"""What travels between actors: Arrow schemas of the three batches, checks at every boundary, read zero-copy
by the learner (`alignray.learner.batch`).

prompt batch  ─rollout→  rollout batch  ─reward→  scored batch  ─learner (No experience batch: each learner
rank computes the advantages of its shard with the whole step's statistics — alignray.learner.train_step — so
they equal the one-big-batch values without another round trip through the store.) Ragged token columns are
list<int32>, log-probs list<float32>. Batches are pyarrow.RecordBatch: Ray's object store holds their buffers
once, and a reader maps them without a copy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from alignray.errors import SchemaError

TOKENS = pa.list_(pa.int32())
FLOATS = pa.list_(pa.float32())
REWARD_PREFIX = "reward_"

PROMPT_FIELDS = [
    pa.field("prompt_id", pa.int64(), nullable=False),
    pa.field("prompt", pa.string()),
    pa.field("prompt_tokens", TOKENS, nullable=False),
]
ROLLOUT_FIELDS = PROMPT_FIELDS + [
    pa.field("sample_index", pa.int32(), nullable=False),
    pa.field("response", pa.string()),
    pa.field("response_tokens", TOKENS, nullable=False),
    pa.field("response_logprobs", FLOATS, nullable=False),
    pa.field("policy_version", pa.int64(), nullable=False),
    pa.field("finish_reason", pa.string(), nullable=False),
]
SCORED_FIELDS = ROLLOUT_FIELDS + [pa.field("reward", pa.float32(), nullable=False)]

SCHEMAS: dict[str, pa.Schema] = {
    "prompt": pa.schema(PROMPT_FIELDS),
    "rollout": pa.schema(ROLLOUT_FIELDS),
    "scored": pa.schema(SCORED_FIELDS),
}


def check_batch(batch: pa.RecordBatch, kind: str, where: str = "") -> pa.RecordBatch:
    """Raise SchemaError naming the column unless `batch` carries every field of `kind` with its exact type.

    Extra columns are allowed only as float32 `reward_<component>` (and other scorer outputs) on scored and
    later batches.
    """
    at = f" at {where}" if where else ""
    if not isinstance(batch, pa.RecordBatch):
        raise SchemaError(f"{kind} batch{at}: expected pyarrow.RecordBatch, got {type(batch).__name__}")
    schema = SCHEMAS[kind]
    for field in schema:
        idx = batch.schema.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(f"{kind} batch{at}: missing column '{field.name}' ({field.type})")
        actual = batch.schema.field(idx).type
        if actual != field.type:
            raise SchemaError(f"{kind} batch{at}: column '{field.name}' has type {actual}, "
                              f"expected {field.type}")
        if not field.nullable and batch.column(idx).null_count:
            raise SchemaError(f"{kind} batch{at}: column '{field.name}' has "
                              f"{batch.column(idx).null_count} nulls")
    for name in batch.schema.names:
        if name in schema.names:
            continue
        if kind == "prompt" or kind == "rollout" or not name.startswith(REWARD_PREFIX):
            raise SchemaError(f"{kind} batch{at}: unexpected column '{name}'")
        if not pa.types.is_floating(batch.schema.field(name).type):
            raise SchemaError(f"{kind} batch{at}: reward column '{name}' must be float, "
                              f"got {batch.schema.field(name).type}")
    return batch


def concat_batches(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One RecordBatch from several with the same schema (copies the buffers once)."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def list_array(rows: list, value_type: pa.DataType) -> pa.Array:
    """Build a list<value_type> column from a list of sequences (numpy arrays or lists)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    np_type = np.int32 if value_type == pa.int32() else np.float32
    values = np.concatenate([np.asarray(r, dtype=np_type) for r in rows]) if rows else np.zeros(0, np_type)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))
