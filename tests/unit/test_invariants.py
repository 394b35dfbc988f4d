"""The run invariants on hand-made runs: one that holds and one that breaks each invariant."""

from __future__ import annotations

import pyarrow as pa
from conftest import tiny_overrides

from alignray.config import load_config
from alignray.data import PromptSampler

# 6 prompts whose ids are line numbers (line 3 was skipped), 2 steps × 3 prompts × 1 sample, no shuffle.
IDS = [1, 2, 4, 5, 6, 7]
CFG = load_config(None, tiny_overrides(**{"train.steps": 2, "train.prompts_per_step": 3,
                                          "rollout.samples_per_prompt": 1, "data.shuffle": False,
                                          "algo.name": "reinforce_pp"}))


def run_of(rows_per_step: list[list[int]], versions: list[int] | None = None):
    versions = versions if versions is not None else list(range(len(rows_per_step)))
    pids, vers = [], []
    for v, rows in zip(versions, rows_per_step, strict=True):
        pids += [IDS[r] for r in rows]
        vers += [v] * len(rows)
    table = pa.table({"policy_version": vers, "prompt_id": pids, "sample_index": [0] * len(pids)})
    metrics = [{"step": s + 1, "samples": len(rows), "staleness": 0} for s, rows in enumerate(rows_per_step)]
    return metrics, table


def check(rows_per_step, versions=None):
    from alignray.driver.invariants import check_invariants

    metrics, table = run_of(rows_per_step, versions)
    return {k: bool(v) for k, v in check_invariants(CFG, metrics, table, IDS).items()}


def test_the_epoch_order_holds():
    assert PromptSampler(6, 0, False).take(6) == [0, 1, 2, 3, 4, 5]
    assert not any(check([[0, 1, 2], [3, 4, 5]]).values())


def test_a_lost_prompt_and_a_duplicate_are_caught():
    broken = check([[0, 1, 2], [3, 4, 4]])  # prompt row 5 lost, row 4 trained twice in one version
    assert broken == {"rows_per_step": False, "unique_samples": True, "prompts_consumed": True,
                      "staleness": False}


def test_a_short_step_is_caught():
    assert check([[0, 1, 2], [3, 4]])["rows_per_step"]
