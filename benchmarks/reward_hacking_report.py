"""The reward-hacking lab's report over seeds: one row per (reward model, seed), their means ± standard
errors, the table and the plot (split from benchmarks/reward_hacking.py, which runs the lab)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

KINDS = ("bt", "causal", "ensemble", "gold")
LABELS = {"bt": "GRPO vs BT RM", "causal": "GRPO vs causal RM", "ensemble": "GRPO vs BT ensemble",
          "gold": "GRPO on gold (reference)"}
COLORS = {"bt": "tab:red", "causal": "tab:blue", "ensemble": "tab:green", "gold": "tab:gray"}
SERIES = {"gold": "reward/gold/mean", "proxy": "reward/proxy/mean", "proxy_std": "reward/std",
          "length": "response_length/mean", "kl": "kl", "gap": "reward/proxy_gold_gap/mean",
          "stop": "stop_per_non_vowel_token", "hacking": "hacking/score", "alarm": "alarm"}
COLUMNS = ("gold_first", "gold_last", "gold_gain", "proxy_first", "proxy_last", "proxy_gold_gap_last",
           "kl_last", "length_first", "length_last")


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _mean(values: list) -> float | None:
    """Mean of the finite values; None when there are none (a series the run does not log)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else None


def seed_rows(curves: dict[int, dict[str, list[dict]]], window: int) -> list[dict]:
    """One row per (rm, seed) from each run's metrics: first / last = mean over the first / last `window`
    steps; alarm_step = the step of the run's reward-hacking warning (None: it never fired)."""
    rows = []
    for seed, runs in curves.items():
        for kind, metrics in runs.items():
            first, last = metrics[:window], metrics[-window:]
            row = {"rm": kind, "seed": seed}
            for short, col in (("gold", "gold"), ("proxy", "proxy"), ("length", "length")):
                row[f"{col}_first"] = _mean([m.get(SERIES[short]) for m in first])
                row[f"{col}_last"] = _mean([m.get(SERIES[short]) for m in last])
            row["gold_gain"] = (None if row["gold_first"] is None or row["gold_last"] is None
                                else row["gold_last"] - row["gold_first"])
            row["proxy_gold_gap_last"] = _mean([m.get(SERIES["gap"]) for m in last])
            row["kl_last"] = _mean([m.get(SERIES["kl"]) for m in last])
            row["hacking_score_last"] = _mean([m.get(SERIES["hacking"]) for m in metrics[-1:]])
            row["alarm_step"] = next((m["step"] for m in metrics if m.get(SERIES["alarm"])), None)
            rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per reward model: mean and standard error (std / √n, ddof 1) of each column over its seeds, and in how
    many runs the hacking alarm fired."""
    out: dict[str, dict] = {}
    for kind in KINDS:
        mine = [r for r in rows if r["rm"] == kind]
        if not mine:
            continue
        entry: dict = {"seeds": [r["seed"] for r in mine], "alarms": sum(r["alarm_step"] is not None
                                                                        for r in mine)}
        for col in COLUMNS:
            values = [r[col] for r in mine if r[col] is not None]
            if values:
                se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
                entry[col] = {"mean": float(np.mean(values)), "se": se}
        out[kind] = entry
    return out


def table(rows: list[dict], window: int) -> str:
    """Markdown: one line per reward model, mean ± SE over its seeds."""
    summary = summarise(rows)
    n = max((len(s["seeds"]) for s in summary.values()), default=0)
    head = (f"| policy (mean ± SE over {n} seeds) | gold first {window} → last {window} steps | gold gain | "
            "proxy last | proxy−gold gap last | KL last | length first → last | hacking alarm |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]

    def cell(entry: dict, col: str, digits: int = 3) -> str:
        value = entry.get(col)
        if value is None:
            return "–"
        se = "" if value["se"] is None else f" ± {value['se']:.{digits}f}"
        return f"{value['mean']:.{digits}f}{se}"

    for kind, entry in summary.items():
        cells = [f"{cell(entry, 'gold_first')} → {cell(entry, 'gold_last')}", cell(entry, "gold_gain"),
                 cell(entry, "proxy_last"), cell(entry, "proxy_gold_gap_last"), cell(entry, "kl_last"),
                 f"{cell(entry, 'length_first', 1)} → {cell(entry, 'length_last', 1)}",
                 f"{entry['alarms']}/{len(entry['seeds'])} runs"]
        lines.append(f"| {LABELS[kind]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _proxy_gain(metrics: list[dict], window: int = 5) -> list[float]:
    """The proxy's gain since the first `window` steps in units of its per-sample std then (the alarm's
    unit): comparable across reward models whose scales differ."""
    first = [m for m in metrics[:window] if m.get("proxy") is not None]
    if not first:
        return [math.nan] * len(metrics)
    base = float(np.mean([m["proxy"] for m in first]))
    sd = float(np.mean([m["proxy_std"] for m in first])) or math.nan
    return [(m["proxy"] - base) / sd if m.get("proxy") is not None else math.nan for m in metrics]


def plot(curves: dict[int, dict[str, list[dict]]], path: Path, title: str) -> None:
    """Four panels per step, each reward model's mean over seeds with a ± SE band."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is missing (pip install 'alignray[bench]'); {path} not written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gold", "gold reward (vowel share)"), ("proxy", "proxy gain (σ of its first steps)"),
              ("length", "response length (tokens)"), ("kl", "KL to the initial policy (k3)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 3.8))
    for ax, (short, label) in zip(axes, panels, strict=True):
        for kind in KINDS:
            runs = [seed_runs[kind] for seed_runs in curves.values() if kind in seed_runs]
            if not runs or (short == "proxy" and kind == "gold"):
                continue
            steps = min(len(r) for r in runs)
            series = np.array([(_proxy_gain(r) if short == "proxy" else [m.get(short) for m in r])[:steps]
                               for r in runs], dtype=float)
            mean = np.nanmean(series, axis=0)
            se = (np.nanstd(series, axis=0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1
                  else np.zeros_like(mean))
            x = [m["step"] for m in runs[0][:steps]]
            ax.plot(x, mean, label=LABELS[kind], color=COLORS[kind], linestyle=":" if kind == "gold" else "-")
            ax.fill_between(x, mean - se, mean + se, color=COLORS[kind], alpha=0.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
