"""One step's metrics line (metrics.jsonl / TensorBoard / progress bar) from the small dicts the actors
return."""

from __future__ import annotations

import math


def _pooled_corr(stats: list[dict]) -> float:
    """Sample-weighted mean of each batch's reward–length correlation (NaN batches skipped)."""
    pairs = [(s["count"], s["reward/length_corr"]) for s in stats if math.isfinite(s["reward/length_corr"])]
    total = sum(n for n, _ in pairs)
    return sum(n * c for n, c in pairs) / total if total else math.nan


def step_metrics(step: int, reward_stats: list[dict], learner: dict, rollout_meta: list[dict],
                 timing: dict[str, float]) -> dict:
    count = sum(s["count"] for s in reward_stats)
    total = sum(s["reward/sum"] for s in reward_stats)
    sumsq = sum(s["reward/sumsq"] for s in reward_stats)
    mean = total / count if count else math.nan
    var = max(sumsq / count - mean * mean, 0.0) if count else math.nan
    tokens = sum(s["response_tokens"] for s in reward_stats)
    versions = [m["policy_version"] for m in rollout_meta]
    step_s = sum(timing.values())
    metrics = {
        "step": step,
        "policy_version": max(versions),
        "staleness": (step - 1) - min(versions),
        "reward/mean": mean,
        "reward/std": math.sqrt(var) if count else math.nan,
        "reward/length_corr": _pooled_corr(reward_stats),
        # rows trained on: algo.dynamic_sampling scores and records `filtered` rows but never trains on them
        "samples": count - sum(s.get("filtered", 0) for s in reward_stats),
        "batch/truncated_share": (sum(s.get("truncated", 0) for s in reward_stats) / count if count
                                  else math.nan),  # finish_reason "length": cut at rollout.max_new_tokens
        "rollout/workers": len({m["worker"] for m in rollout_meta}),
        "quarantined": sum(len(s["quarantined"]) for s in reward_stats),
        "response_length/mean": tokens / count if count else math.nan,
        "kl": learner.get("kl", math.nan),
        "entropy": learner.get("entropy", math.nan),
        "loss/policy": learner.get("loss/policy", math.nan),
        "grad_norm": learner.get("grad_norm", math.nan),
        **{f"timing/{k}": v for k, v in timing.items()},
        "throughput/samples_per_s": count / step_s if step_s else math.nan,
        "throughput/tokens_per_s": tokens / step_s if step_s else math.nan,
        "throughput/generate_tokens_per_s": (sum(m["new_tokens"] for m in rollout_meta)
                                             / max(sum(m["seconds"] for m in rollout_meta), 1e-9)),
    }
    for key in reward_stats[0]:
        if key.startswith("reward/") and key.endswith("/sum") and key != "reward/sum":
            name = key[len("reward/"):-len("/sum")]
            metrics[f"reward/{name}/mean"] = sum(s[key] for s in reward_stats) / count if count else math.nan
    if "episode/turns" in reward_stats[0] and count:  # rollout.env: turns and policy tokens per episode
        for key in ("episode/turns", "episode/policy_tokens"):
            metrics[f"{key}/mean"] = sum(s[key] for s in reward_stats) / count
    if "filtered_groups" in reward_stats[0]:  # algo.dynamic_sampling: groups dropped, all rounds of the step
        metrics["batch/filtered_groups"] = sum(s["filtered_groups"] for s in reward_stats)
    if "gold/sumsq" in reward_stats[0] and count:  # a gold scorer: its per-sample spread (driver.hacking)
        gold_mean = sum(s["gold/sum"] for s in reward_stats) / count
        gold_sq = sum(s["gold/sumsq"] for s in reward_stats) / count
        metrics["reward/gold_std"] = math.sqrt(max(gold_sq - gold_mean * gold_mean, 0.0))
    for key, value in learner.items():
        if key not in metrics:
            metrics[key if "/" in key else f"learner/{key}"] = value
    return metrics
