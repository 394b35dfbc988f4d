"""Scorers turn a rollout batch into a scored batch: one `reward_<name>` column per component plus the
weighted total.

A scorer with weight 0 is computed and logged (`reward_<name>`, `reward/<name>/mean`) but adds nothing to the
optimised `reward`. A `gold` scorer (weight 0, at most one) is a reference reward, for example the true reward
a learned proxy stands in for: the driver also logs `reward/proxy_gold_gap/mean` = mean(reward − gold), which
grows while a policy over-optimises the proxy (compare it with its first steps; the two scales need not
match).

A scorer that raises or returns a non-finite value for a sample is never turned into zero: the sample is
reported by its (prompt_id, sample_index) and, by policy, the step fails or the sample is quarantined (dropped
and logged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alignray.algorithms.dynamic_sampling import mark_uniform_groups
from alignray.config_sections import ScorerConfig
from alignray.envs.config import ENV_COMPONENT
from alignray.errors import RewardError
from alignray.rewards.functions import resolve_reward_fn
from alignray.schema import REWARD_PREFIX, check_batch


@dataclass
class ScoreResult:
    """Per-sample values of one scorer: `columns['reward']` is the component, other keys are extra columns."""

    columns: dict[str, np.ndarray]
    errors: dict[int, str] = field(default_factory=dict)  # row -> what went wrong


class FunctionScorer:
    def __init__(self, cfg: ScorerConfig):
        self.name, self.weight, self.gold, self.kwargs = cfg.name, cfg.weight, cfg.gold, dict(cfg.kwargs)
        self.fn = resolve_reward_fn(cfg.function or "")

    def score(self, prompts: list[str], responses: list[str]) -> ScoreResult:
        values = np.full(len(prompts), np.nan, dtype=np.float32)
        errors: dict[int, str] = {}
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            try:
                values[i] = float(self.fn(p, r, **self.kwargs))
            except Exception as e:  # noqa: BLE001 - any user reward error is reported with its sample id
                errors[i] = f"raised {type(e).__name__}: {e}"
        return ScoreResult({"reward": values}, errors)


class EnvironmentScorer:
    """The episode reward of multi-turn rollouts (`rollout.env`): `reward_env` = the sum of an episode's
    `turn_rewards`, weighted by `rollout.env_weight`. An episode whose environment failed (`env_error`) is a
    problem of this component, reported by sample id and failed or quarantined by `reward.on_error`."""

    name, gold = ENV_COMPONENT, False

    def __init__(self, weight: float):
        self.weight = weight

    def score_episodes(self, batch: pa.RecordBatch) -> ScoreResult:
        if "turn_rewards" not in batch.schema.names:
            raise RewardError("rollout.env is set but the rollout batch has no episode columns")
        turns = batch.column("turn_rewards")
        row_of = np.repeat(np.arange(batch.num_rows), np.diff(np.asarray(turns.offsets)))
        values = np.bincount(row_of, weights=turns.flatten().to_numpy(zero_copy_only=False),
                             minlength=batch.num_rows).astype(np.float32)
        errors = {i: e for i, e in enumerate(batch.column("env_error").to_pylist()) if e is not None}
        values[list(errors)] = np.nan
        return ScoreResult({"reward": values}, errors)


COMBINE = {"mean": "mean", "lcb": "lcb", "wco": "worst_case", "uwo": "uncertainty_weighted"}
"""`ensemble.combine` → the aggregation rule of alignray.rewards.ensemble."""


class ModelScorer:
    """A reward model from a directory: a plain HF sequence classifier or any alignray reward model."""

    def __init__(self, cfg: ScorerConfig, trust_remote_code: bool = False, device: str = "cpu"):
        from alignray.rewards.ensemble_models import EnsembleRewardModel
        from alignray.rewards.loading import load_reward_model

        self.name, self.weight, self.gold, self.batch_size = cfg.name, cfg.weight, cfg.gold, cfg.batch_size
        if cfg.ensemble is None:
            self.model = load_reward_model(cfg.path, trust_remote_code=trust_remote_code, device=device)
        else:
            spec = cfg.ensemble
            members = [load_reward_model(m, trust_remote_code=trust_remote_code, device=device)
                       for m in spec.members]
            self.model = EnsembleRewardModel(members, COMBINE[spec.combine], spec.coef).eval()

    def score(self, prompts: list[str], responses: list[str]) -> ScoreResult:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(prompts), self.batch_size):
            out = self.model.score(prompts[start:start + self.batch_size],
                                   responses[start:start + self.batch_size])
            for key, value in out.items():
                parts.setdefault(key, []).append(np.asarray(value, dtype=np.float32))
        return ScoreResult({k: np.concatenate(v) for k, v in parts.items()})


def build_scorers(configs: list[ScorerConfig], trust_remote_code: bool = False, device: str = "cpu") -> list:
    """The scorers of `configs`; reward models load on `device` (the reward worker's GPU when
    `reward.num_gpus` > 0)."""
    return [FunctionScorer(c) if c.type == "function" else ModelScorer(c, trust_remote_code, device)
            for c in configs]


def _sample_id(batch: pa.RecordBatch, row: int) -> str:
    return (f"prompt_id={batch.column('prompt_id')[row].as_py()} "
            f"sample_index={batch.column('sample_index')[row].as_py()}")


def score_batch(batch: pa.RecordBatch, scorers: list, on_error: str,
                filter_uniform: bool = False) -> tuple[pa.RecordBatch, dict]:
    """Apply every scorer; returns the scored batch and small stats (means, quarantined samples) for the
    driver. `filter_uniform` (algo.dynamic_sampling): the column `filtered` marks the prompt groups whose
    samples share one reward, and the stats count them (alignray.algorithms.dynamic_sampling)."""
    check_batch(batch, "rollout", "reward worker input")
    prompts = batch.column("prompt").to_pylist()
    responses = batch.column("response").to_pylist()
    total = np.zeros(batch.num_rows, dtype=np.float32)
    columns: dict[str, np.ndarray] = {}
    problems: dict[int, list[str]] = {}
    for scorer in scorers:
        result = (scorer.score_episodes(batch) if isinstance(scorer, EnvironmentScorer)
                  else scorer.score(prompts, responses))
        main = result.columns["reward"]
        for row, msg in result.errors.items():
            problems.setdefault(row, []).append(f"reward '{scorer.name}' {msg}")
        for row in np.flatnonzero(~np.isfinite(main)):
            if int(row) not in result.errors:
                problems.setdefault(int(row), []).append(f"reward '{scorer.name}' returned {main[row]}")
        columns[REWARD_PREFIX + scorer.name] = main
        for key, value in result.columns.items():
            if key != "reward":
                columns[f"{REWARD_PREFIX}{scorer.name}_{key}"] = value
        if scorer.weight != 0:  # weight 0: logged only (and a NaN there must not reach the total as 0·NaN)
            total += scorer.weight * main
    reports = [f"{_sample_id(batch, row)}: {'; '.join(msgs)}" for row, msgs in sorted(problems.items())]
    if reports and on_error == "fail":
        more = f" (and {len(reports) - 5} more)" if len(reports) > 5 else ""
        raise RewardError("reward failed for " + " | ".join(reports[:5]) + more +
                          " — set reward.on_error=quarantine to drop such samples instead")
    scored = batch.append_column("reward", pa.array(total, type=pa.float32()))
    for name, values in columns.items():
        scored = scored.append_column(name, pa.array(values, type=pa.float32()))
    if problems:
        keep = np.setdiff1d(np.arange(batch.num_rows), np.fromiter(problems, dtype=np.int64))
        scored = scored.take(pa.array(keep, type=pa.int64()))
    check_batch(scored, "scored", "reward worker output")
    gold = next((s.name for s in scorers if getattr(s, "gold", False)), None)
    stats = batch_reward_stats(scored, reports, gold)
    if filter_uniform:
        scored, counts = mark_uniform_groups(scored)
        stats.update(counts)
    return scored, stats


def batch_reward_stats(scored: pa.RecordBatch, quarantined: list[str], gold: str | None = None) -> dict:
    """Scalars the driver logs: mean/std reward, per-component means, and the reward–length correlation; with
    a gold scorer, the sum of (reward − gold), which the driver turns into `reward/proxy_gold_gap/mean`."""
    reward = scored.column("reward").to_numpy()
    lengths = np.diff(np.asarray(scored.column("response_tokens").offsets)).astype(np.float64)
    stats = {"reward/sum": float(reward.sum()), "reward/sumsq": float((reward.astype(np.float64) ** 2).sum()),
             "count": int(scored.num_rows), "response_tokens": float(lengths.sum()),
             "quarantined": quarantined, "reward/length_corr": _pearson(reward, lengths),
             "truncated": int(pc.sum(pc.equal(scored.column("finish_reason"), "length")).as_py() or 0)}
    for name in scored.schema.names:
        if name.startswith(REWARD_PREFIX):
            stats[f"reward/{name[len(REWARD_PREFIX):]}/sum"] = float(scored.column(name).to_numpy().sum())
    if gold is not None:
        gap = reward.astype(np.float64) - scored.column(REWARD_PREFIX + gold).to_numpy()
        stats["reward/proxy_gold_gap/sum"] = float(gap.sum())
        gold_values = scored.column(REWARD_PREFIX + gold).to_numpy().astype(np.float64)
        # its spread, for the hacking alarm (alignray.driver.hacking)
        stats["gold/sum"], stats["gold/sumsq"] = float(gold_values.sum()), float((gold_values ** 2).sum())
    if "num_turns" in scored.schema.names:  # episodes: turns and policy-written tokens (loss_mask = 1)
        stats["episode/turns"] = float(pc.sum(scored.column("num_turns")).as_py() or 0)
        stats["episode/policy_tokens"] = float(pc.sum(scored.column("loss_mask").flatten()).as_py() or 0)
    return stats


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x.astype(np.float64), y)[0, 1])
