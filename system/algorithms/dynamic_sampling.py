"""Dynamic sampling (DAPO, arXiv 2503.14476 §3.2): drop the prompt groups that carry no signal and draw more.

A group-based estimator (GRPO, Dr. GRPO, RLOO, REINFORCE++ with a group baseline) gives every sample of a
prompt its reward minus the group's baseline: when all samples of a prompt got the same reward, every
advantage of the group is 0 — the group only shrinks the batch. With `algo.dynamic_sampling` such *uniform*
groups are dropped and the step draws new prompts until it holds `train.prompts_per_step` informative groups,
in at most `algo.dynamic_sampling_max_rounds` generation rounds (then it trains on the groups it has).

Where each piece runs (pure: numpy and pyarrow, no torch, no Ray):

- the reward worker marks the rows of uniform groups in a bool column `filtered` (`mark_uniform_groups`) and
  returns the counts (`filtered_groups`, `filtered` rows) with its small stats;
- the driver's shard pipeline asks `prompts_to_add` how many new prompts the next round draws (exactly the
  missing informative groups, so a step never holds more than `prompts_per_step`);
- the learner trains on `informative_rows` of the step's batch; the rollouts Parquet keeps every row, with
  `filtered`.

Uniform means max = min, exactly, over the group's rewards (the scorers' weighted `reward`, before any
`algo.overlong` penalty or KL term: DAPO filters on the task reward); a group of one sample is uniform.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FILTERED = "filtered"
"""The bool column of a scored batch: True on rows of uniform groups (not trained on)."""


def uniform_groups(prompt_ids: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per row, True where every sample of the row's group (the rows with its prompt_id) has one reward."""
    prompt_ids, rewards = np.asarray(prompt_ids), np.asarray(rewards, dtype=np.float64)
    if not len(prompt_ids):
        return np.zeros(0, dtype=bool)
    _, group = np.unique(prompt_ids, return_inverse=True)
    n = int(group.max()) + 1
    high, low = np.full(n, -np.inf), np.full(n, np.inf)
    np.maximum.at(high, group, rewards)
    np.minimum.at(low, group, rewards)
    return (high == low)[group]


def mark_uniform_groups(scored: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, int]]:
    """`scored` with the column `filtered`, and {filtered_groups, filtered (rows)} for the driver.

    `filtered_groups` counts prompt *dispatches*: a prompt drawn twice into one shard (an epoch boundary)
    forms one group of twice the samples here and in the learner, but is two of the step's prompts."""
    prompt_ids = scored.column("prompt_id").to_numpy()
    uniform = uniform_groups(prompt_ids, scored.column("reward").to_numpy())
    sample_index = scored.column("sample_index").to_numpy()
    counts = {"filtered_groups": dispatches(prompt_ids[uniform], sample_index[uniform]),
              "filtered": int(uniform.sum())}
    return scored.append_column(FILTERED, pa.array(uniform, type=pa.bool_())), counts


def dispatches(prompt_ids: np.ndarray, sample_index: np.ndarray) -> int:
    """How many prompt dispatches these rows are: per prompt, the most rows sharing one sample index."""
    if not len(prompt_ids):
        return 0
    pairs, repeats = np.unique(np.stack([prompt_ids, sample_index]), axis=1, return_counts=True)
    most: dict[int, int] = {}
    for pid, n in zip(pairs[0].tolist(), repeats.tolist(), strict=True):
        most[pid] = max(most.get(pid, 0), n)
    return sum(most.values())


def informative_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The rows a learner trains on: those not `filtered`, without the column (a batch without it: as is)."""
    if FILTERED not in batch.schema.names:
        return batch
    keep = pc.invert(batch.column(FILTERED))
    return batch.filter(keep).drop_columns([FILTERED])


def prompts_to_add(target: int, informative: int, rounds: int, max_rounds: int) -> int:
    """New prompts for the next generation round: the missing informative groups (target − informative), or 0
    once the step has them or has used its `max_rounds` rounds (the first round included)."""
    return max(target - informative, 0) if rounds < max_rounds else 0
