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
OPTIONAL_SCORED_FIELDS = {
    # algo.dynamic_sampling: True on the rows of prompt groups that share one reward (not trained on)
    "filtered": pa.field("filtered", pa.bool_(), nullable=False),
}

EPISODE_FIELDS = [
    # rollout.env: multi-turn episodes; all four columns, or none (one-turn rollouts)
    pa.field("loss_mask", pa.list_(pa.int8()), nullable=False),  # aligned with response_tokens: 1 = policy
    pa.field("num_turns", pa.int32(), nullable=False),
    pa.field("turn_rewards", FLOATS, nullable=False),  # one per policy turn: the environment's step rewards
    pa.field("env_error", pa.string()),  # null unless the episode's environment failed
]
EPISODE_NAMES = {f.name for f in EPISODE_FIELDS}
ROW_FIELDS = pa.field("fields", pa.string())
"""Prompt batches of episodes: the data row's other fields as a JSON object, for the environment's `reset`."""

SCHEMAS: dict[str, pa.Schema] = {
    "prompt": pa.schema(PROMPT_FIELDS),
    "rollout": pa.schema(ROLLOUT_FIELDS),
    "scored": pa.schema(SCORED_FIELDS),
}


def check_batch(batch: pa.RecordBatch, kind: str, where: str = "") -> pa.RecordBatch:
    """Raise SchemaError naming the column unless `batch` carries every field of `kind` with its exact type.

    Extra columns are allowed only as float32 `reward_<component>` (and other scorer outputs) on scored and
    later batches, as the fields of OPTIONAL_SCORED_FIELDS on scored batches, as the episode columns
    (EPISODE_FIELDS, all or none) on rollout and scored batches, and as ROW_FIELDS on prompt batches.
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
        if name in schema.names or (name in EPISODE_NAMES and kind != "prompt"):
            continue
        if kind == "prompt" and name == ROW_FIELDS.name:
            if batch.schema.field(name).type != ROW_FIELDS.type:
                raise SchemaError(f"{kind} batch{at}: column '{name}' must be {ROW_FIELDS.type}")
            continue
        optional = OPTIONAL_SCORED_FIELDS.get(name) if kind == "scored" else None
        if optional is not None:
            column = batch.column(name)
            if column.type != optional.type or column.null_count:
                raise SchemaError(f"{kind} batch{at}: column '{name}' must be {optional.type} without nulls, "
                                  f"got {column.type} with {column.null_count} nulls")
            continue
        if kind == "prompt" or kind == "rollout" or not name.startswith(REWARD_PREFIX):
            raise SchemaError(f"{kind} batch{at}: unexpected column '{name}'")
        if not pa.types.is_floating(batch.schema.field(name).type):
            raise SchemaError(f"{kind} batch{at}: reward column '{name}' must be float, "
                              f"got {batch.schema.field(name).type}")
    if EPISODE_NAMES & set(batch.schema.names):
        check_episode_columns(batch, f"{kind} batch{at}")
    return batch


def check_episode_columns(batch: pa.RecordBatch, what: str) -> None:
    """The episode columns (EPISODE_FIELDS) are all there with their types; `loss_mask` is 0/1 and as long as
    `response_tokens` in every row, `turn_rewards` holds `num_turns` values."""
    for field in EPISODE_FIELDS:
        idx = batch.schema.get_field_index(field.name)
        if idx < 0:
            raise SchemaError(f"{what}: episode column '{field.name}' ({field.type}) missing: the columns "
                              f"{sorted(EPISODE_NAMES)} come together")
        column = batch.column(idx)
        if column.type != field.type or (not field.nullable and column.null_count):
            raise SchemaError(f"{what}: column '{field.name}' must be {field.type}"
                              f"{'' if field.nullable else ' without nulls'}, got {column.type} "
                              f"with {column.null_count} nulls")
    mask, tokens = batch.column("loss_mask"), batch.column("response_tokens")
    if not np.array_equal(np.diff(np.asarray(mask.offsets)), np.diff(np.asarray(tokens.offsets))):
        raise SchemaError(f"{what}: 'loss_mask' is not aligned with 'response_tokens' (lengths differ)")
    values = mask.flatten().to_numpy(zero_copy_only=False)
    if len(values) and not np.isin(values, (0, 1)).all():
        raise SchemaError(f"{what}: 'loss_mask' holds values other than 0 and 1")
    turns = np.diff(np.asarray(batch.column("turn_rewards").offsets))
    if not np.array_equal(turns, batch.column("num_turns").to_numpy(zero_copy_only=False)):
        raise SchemaError(f"{what}: 'turn_rewards' must hold 'num_turns' values per row")


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
    np_type = {pa.int32(): np.int32, pa.int8(): np.int8}.get(value_type, np.float32)
    values = np.concatenate([np.asarray(r, dtype=np_type) for r in rows]) if rows else np.zeros(0, np_type)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))
