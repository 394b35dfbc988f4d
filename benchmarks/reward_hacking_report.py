"""The reward-hacking lab's report: the summary rows, the table and the plot of the GRPO runs' curves (split
from benchmarks/reward_hacking.py, which runs the lab)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = {"bt": "GRPO vs BT RM", "causal": "GRPO vs causal RM", "gold": "GRPO on gold (reference)"}
COLORS = {"bt": "tab:red", "causal": "tab:blue", "gold": "tab:gray"}
SERIES = {"gold": "reward/gold/mean", "proxy": "reward/proxy/mean", "length": "response_length/mean",
          "kl": "kl", "gap": "reward/proxy_gold_gap/mean", "stop": "stop_per_non_vowel_token"}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def summarise(curves: dict[str, list[dict]], window: int) -> list[dict]:
    rows = []
    for kind, metrics in curves.items():
        row = {"policy": LABELS[kind]}
        for short, key in SERIES.items():
            values = [m.get(key, float("nan")) for m in metrics]
            for col, part in ((f"{short}_start", values[:window]), (f"{short}_end", values[-window:])):
                row[col] = float(np.mean(part)) if np.all(np.isfinite(part)) else None  # None: not logged
        rows.append(row)
    return rows


def table(rows: list[dict], window: int) -> str:
    head = (f"| policy | gold first {window} → last {window} steps | proxy | response length (tokens) | KL | "
            "proxy−gold gap | stop bytes per non-vowel token |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    def cell(r: dict, s: str, digits: int = 3) -> str:
        a, b = r[f"{s}_start"], r[f"{s}_end"]
        return "–" if a is None or b is None else f"{a:.{digits}f} → {b:.{digits}f}"

    for r in rows:
        cells = [cell(r, "gold"), cell(r, "proxy"), cell(r, "length", 1), cell(r, "kl"), cell(r, "gap"),
                 cell(r, "stop", 4)]
        lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], path: Path, title: str, scale: dict[str, float]) -> None:
    """Five panels per step; the proxy reward is divided by its RM's reward std on the test pairs (scales
    differ)."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is missing (pip install 'alignray[bench]'); {path} not written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gold", "gold reward (vowel share, stop byte not counted)"),
              ("proxy", "proxy reward / its RM's test std"),
              ("length", "response length (tokens)"), ("stop", "stop bytes per non-vowel token"),
              ("kl", "KL to the initial policy (k3)")]
    fig, axes = plt.subplots(1, 5, figsize=(21, 3.8))
    for ax, (short, label) in zip(axes, panels, strict=True):
        for kind, metrics in curves.items():
            steps = [m["step"] for m in metrics]
            div = scale.get(kind, float("nan")) if short == "proxy" else 1.0
            ax.plot(steps, [m.get(SERIES[short], float("nan")) / div for m in metrics],
                    label=LABELS[kind], color=COLORS[kind], linestyle=":" if kind == "gold" else "-")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
