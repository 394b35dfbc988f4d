"""Dynamic sampling (algo.dynamic_sampling) on hand-made rewards: which groups are dropped, how many prompts
each further round draws, the shard pipeline's rounds against a real ledger, the step's metrics and the run
invariants (every expected number is worked out in a comment)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import tiny_overrides

from alignray.algorithms.dynamic_sampling import (
    informative_rows,
    prompts_to_add,
    uniform_groups,
)
from alignray.config import load_config
from alignray.config_sections import ScorerConfig
from alignray.data import PromptSampler
from alignray.driver.invariants import check_invariants
from alignray.driver.ledger import PromptLedger
from alignray.driver.shards import Shard, ShardPipeline
from alignray.driver.stats import step_metrics
from alignray.rewards.scorers import build_scorers, score_batch
from alignray.rollout.engine import Completion, build_rollout_batch
from alignray.schema import check_batch, list_array


def test_uniform_groups_by_hand():
    prompt_ids = [7, 7, 7, 3, 3, 3, 9, 9, 5]
    rewards = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 2.0]
    # 7: all 1 → uniform; 3: {0, 1, 0} → informative; 9: {0.5, 0.5} → uniform; 5: one sample → uniform
    assert uniform_groups(prompt_ids, rewards).tolist() == [True] * 3 + [False] * 3 + [True] * 3
    # exactly equal only: a difference of one float32 ulp keeps the group (its GRPO advantages are not 0)
    assert uniform_groups([1, 1], np.array([1.0, np.nextafter(np.float32(1), 2)], np.float32)).tolist() == \
        [False, False]
    assert uniform_groups([], []).tolist() == []


def rollout(prompt_ids: list[int], samples: int, responses: list[str]) -> pa.RecordBatch:
    prompts = pa.record_batch({"prompt_id": pa.array(prompt_ids, pa.int64()),
                               "prompt": [f"p{i}" for i in prompt_ids],
                               "prompt_tokens": list_array([[3]] * len(prompt_ids), pa.int32())})
    comps = [[Completion(np.array([5, 6], np.int32), np.zeros(2, np.float32), "stop") for _ in range(samples)]
             for _ in prompt_ids]
    batch = build_rollout_batch(prompts, comps, 0, lambda t: "")
    return batch.set_column(batch.schema.get_field_index("response"), "response", pa.array(responses))


def test_the_reward_worker_marks_uniform_groups_and_the_learner_drops_them():
    scorers = build_scorers([ScorerConfig(name="yes", function="contains_keyword")])
    # prompt 1: "yes"/"no" → 1, 0 (informative); prompt 2: "no"/"nope" → 0, 0; prompt 3: "yes"/"yes!" → 1, 1
    batch = rollout([1, 2, 3], 2, ["yes", "no", "no", "nope", "yes", "yes!"])
    scored, stats = score_batch(batch, scorers, "fail", filter_uniform=True)
    check_batch(scored, "scored", "test")  # `filtered` is a known optional column of scored batches
    assert scored.column("filtered").to_pylist() == [False, False, True, True, True, True]
    assert (stats["filtered_groups"], stats["filtered"], stats["count"]) == (2, 4, 6)
    trained = informative_rows(scored)
    assert trained.column("prompt_id").to_pylist() == [1, 1] and "filtered" not in trained.schema.names
    check_batch(trained, "scored", "learner input")
    plain, plain_stats = score_batch(batch, scorers, "fail")  # dynamic sampling off: nothing added
    assert "filtered" not in plain.schema.names and "filtered_groups" not in plain_stats
    assert informative_rows(plain) is plain
    # the driver's metrics: 6 scored, 2 trained, 2 groups dropped; 0 of 6 answers were cut at the budget
    m = step_metrics(1, [stats], {}, [{"policy_version": 0, "worker": "w", "new_tokens": 12, "seconds": 1.0}],
                     {"generate_s": 1.0})
    assert (m["samples"], m["batch/filtered_groups"], m["batch/truncated_share"]) == (2, 2, 0.0)
    assert m["reward/mean"] == pytest.approx(3 / 6)  # the reward of every generated sample, filtered or not


def test_a_prompt_drawn_twice_into_one_shard_counts_twice():
    # an epoch boundary inside a step: prompt 4 dispatched twice (2 samples each), one group of 4 rows of 0
    batch = rollout([4, 4, 8], 2, ["no", "nope", "nah", "no!", "yes", "no"])
    scored, stats = score_batch(batch, build_scorers([ScorerConfig(name="yes", function="contains_keyword")]),
                                "fail", filter_uniform=True)
    assert scored.column("filtered").to_pylist() == [True] * 4 + [False] * 2
    assert (stats["filtered_groups"], stats["filtered"]) == (2, 4)  # 2 of the shard's 3 prompts dropped


def test_prompts_to_add_by_hand():
    assert prompts_to_add(16, 10, rounds=1, max_rounds=3) == 6  # 6 groups missing
    assert prompts_to_add(16, 16, rounds=1, max_rounds=3) == 0  # full
    assert prompts_to_add(16, 12, rounds=3, max_rounds=3) == 0  # out of rounds: train on 12
    assert prompts_to_add(16, 0, rounds=1, max_rounds=1) == 0  # one round: filter only, never refill


class FakePipeline(ShardPipeline):
    """The shard pipeline's rounds against a real ledger; generation and scoring faked: an even prompt row's
    group is uniform."""

    def dispatch(self, step, prompts=None, first_part=0):
        return [Shard(step, first_part, self.ledger.dispatch(prompts or self.cfg.train.prompts_per_step))]

    def gather(self, shards):
        for s in shards:
            s.stats = {"filtered_groups": sum(r % 2 == 0 for r in s.rows)}
        return shards


def pipeline(max_rounds: int) -> FakePipeline:
    cfg = load_config(None, tiny_overrides(**{"algo.dynamic_sampling": True, "data.shuffle": False,
                                              "algo.dynamic_sampling_max_rounds": max_rounds}))
    return FakePipeline(cfg, None, PromptLedger(PromptSampler(40, 0, False)), None, None, None)


def test_rounds_draw_exactly_the_missing_groups_from_the_ledger(capsys):
    pipe = pipeline(max_rounds=5)
    shards, rounds = pipe.collect(pipe.dispatch(1))
    # rows 0-3 → 1, 3 informative; +2: rows 4, 5 → 5; +1: row 6 → none; +1: row 7 → 4 groups in 4 rounds
    assert [s.rows for s in shards] == [[0, 1, 2, 3], [4, 5], [6], [7]] and rounds == 4
    assert [s.part for s in shards] == [0, 1, 2, 3]  # new parts: their own seeds and Parquet files
    assert sorted(pipe.ledger.in_flight.elements()) == list(range(8))  # all of them out, filtered ones too
    pipe.ledger.consume([r for s in shards for r in s.rows])  # … and consumed once, with the step
    assert not pipe.ledger.in_flight and pipe.ledger.counts["consumed"] == 8
    assert capsys.readouterr().err == ""


def test_out_of_rounds_the_step_trains_on_what_it_has_said_once(capsys):
    pipe = pipeline(max_rounds=2)
    shards, rounds = pipe.collect(pipe.dispatch(1))
    assert [s.rows for s in shards] == [[0, 1, 2, 3], [4, 5]] and rounds == 2  # 1, 3, 5: 3 of 4
    shards, rounds = pipe.collect(pipe.dispatch(2))
    assert [s.rows for s in shards] == [[6, 7, 8, 9], [10, 11]] and rounds == 2  # 7, 9, 11: 3 again
    err = capsys.readouterr().err
    assert err.count("alignray: warning:") == 1 and "step 1 has 3 of 4 informative" in err


# 6 prompts (ids = line numbers, line 3 skipped), 2 steps × 2 prompts × 2 samples, no shuffle, ≤ 2 rounds.
IDS = [1, 2, 4, 5, 6, 7]
CFG = load_config(None, tiny_overrides(**{"train.steps": 2, "train.prompts_per_step": 2,
                                          "rollout.samples_per_prompt": 2, "data.shuffle": False,
                                          "algo.dynamic_sampling": True,
                                          "algo.dynamic_sampling_max_rounds": 2}))


def run(steps: list[tuple[list[int], list[int], int]], claimed: list[int] | None = None) -> dict[str, bool]:
    """Each step: (prompt rows generated, the rows of them filtered, generation rounds); 2 samples each.
    `claimed`: the steps' `batch/prompts` if not the rows generated."""
    pids, versions, filtered, metrics = [], [], [], []
    for v, (rows, dropped, rounds) in enumerate(steps):
        for r in rows:
            pids += [IDS[r]] * 2
            versions += [v] * 2
            filtered += [r in dropped] * 2
        metrics.append({"step": v + 1, "samples": 2 * (len(rows) - len(dropped)), "staleness": 0,
                        "batch/prompts": claimed[v] if claimed else len(rows),
                        "batch/generation_rounds": rounds})
    table = pa.table({"policy_version": versions, "prompt_id": pids, "sample_index": [0, 1] * len(pids[::2]),
                      "filtered": filtered})
    return {k: bool(v) for k, v in check_invariants(CFG, metrics, table, IDS).items()}


def test_invariants_replay_the_epoch_order_with_the_extra_rounds():
    # step 1: rows 0, 1 → row 0 uniform → round 2 draws row 2; step 2: rows 3, 4, both informative
    assert not any(run([([0, 1, 2], [0], 2), ([3, 4], [], 1)]).values())
    # the filtered prompt not counted in batch/prompts: the replay disagrees with what was consumed
    broken = run([([0, 1, 2], [0], 2), ([3, 4], [], 1)], claimed=[2, 2])
    assert broken["prompts_consumed"] and not broken["rows_per_step"]


def test_invariants_allow_a_short_step_only_after_the_last_round():
    # step 2: rows 3, 4 → row 3 uniform, round 2 draws row 5, uniform too: 1 informative group after 2 rounds
    assert not any(run([([0, 1, 2], [0], 2), ([3, 4, 5], [3, 5], 2)]).values())
    # the same short step after 1 round (rounds were left): a step that should have drawn more
    assert run([([0, 1, 2], [0], 2), ([3, 4], [3], 1)])["rows_per_step"]


def test_invariants_catch_trained_rows_missing_from_the_rollouts():
    pids = [IDS[r] for r in (0, 0, 1, 1, 2, 2, 3, 3, 4, 4)]
    table = pa.table({"policy_version": [0] * 6 + [1] * 4, "prompt_id": pids, "sample_index": [0, 1] * 5,
                      "filtered": [False] * 10})  # row 0's samples were filtered, but not marked so
    metrics = [{"step": 1, "samples": 4, "staleness": 0, "batch/prompts": 3, "batch/generation_rounds": 2},
               {"step": 2, "samples": 4, "staleness": 0, "batch/prompts": 2, "batch/generation_rounds": 1}]
    problems = check_invariants(CFG, metrics, table, IDS)
    assert problems["rows_per_step"] == "the rollouts hold 10 unfiltered rows, 8 were trained"
