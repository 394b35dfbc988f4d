"""The reward-hacking lab: GRPO against a length-biased BT reward model and against the causal reward model.

    python benchmarks/reward_hacking.py [--steps 40] [--seed 0] [--out benchmarks/results/reward_hacking.json]

One run does everything and writes the table (printed), the JSON (`--out`) and the plot (same name, `.png`):

1. Policy and text: the quickstart's tiny random Llama with its byte tokenizer, on the built-in prompts. An answer ends
   at EOS or at a control byte 0x00-0x0F (`rollout.stop_token_ids`), so the initial policy's answers are ~15 of at most
   `--max-new-tokens` tokens and length can move both ways.
2. Gold reward, known: the share of vowels in the answer (`vowel_ratio`, the quickstart's reward, which the tiny
   policy learns within 40 steps).
3. Preference pairs of the policy's own kind of text (random byte tokens, each a vowel with probability v ~ U(0, 1),
   length ~ U{1..max-1} tokens, decoded as the rollout worker decodes): the higher-gold response is chosen, but pairs
   where it is the shorter one are kept only with probability `--keep-shorter`, so the chosen response is longer in
   most pairs; then `--noise` of the labels are flipped. Test pairs: length independent of gold, clean labels.
4. Two reward models on the same pairs (in process, the functions `alignray rm train` runs): BT and causal
   (MMD over 10 quantile bins of `policy_tokens`, the answer's length in policy tokens, a data attribute; conditional,
   λ `--mmd-lambda`); a tiny random BERT over the same byte tokenizer. (`length_tokens`, the RM tokenizer's count,
   differs: a byte that is not valid UTF-8 decodes to U+FFFD and re-encodes as 3 bytes.) Both are checked with `rm eval` (`alignray.rewards.cli.rm_eval_main`, `--baseline` BT).
5. Two GRPO runs (`alignray train`): `{name: proxy, type: model, path: RM}` optimised and
   `{name: gold, function: vowel_ratio, weight: 0, gold: true}` logged only, so every step's metrics hold the gold
   reward, the proxy reward, `reward/proxy_gold_gap/mean`, the response length and the KL to the initial policy
   (`algo.kl_coef` > 0 builds the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
STOP_BYTES = range(0x00, 0x10)
VOWELS = "aeiou"
LENGTHS = ("policy_tokens", "length_tokens", "length_chars")


def byte_tokenizer():
    from alignray.models import build_byte_tokenizer

    return build_byte_tokenizer()


def byte_ids(tok, byte_values) -> list[int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [tok.convert_tokens_to_ids(table[b]) for b in byte_values]


class TextMaker:
    """Responses of the policy's kind: random byte tokens, each a vowel with probability v, then a stop byte."""

    def __init__(self, tok, max_new_tokens: int, rng: np.random.Generator):
        from alignray.data import builtin_prompts
        from alignray.rewards.functions import vowel_ratio

        self.tok, self.max_new, self.rng, self.gold = tok, max_new_tokens, rng, vowel_ratio
        self.stop = byte_ids(tok, STOP_BYTES)
        self.vowels = byte_ids(tok, VOWELS.encode())
        special = set(tok.all_special_ids)
        self.other = [i for i in range(len(tok)) if i not in special and i not in self.stop]
        self.prompts = builtin_prompts("vowels")

    def response(self) -> tuple[str, float, int]:
        length = int(self.rng.integers(1, self.max_new))
        vowel_p = self.rng.uniform()
        ids = [int(self.rng.choice(self.vowels)) if self.rng.uniform() < vowel_p else int(self.rng.choice(self.other))
               for _ in range(length)] + [int(self.rng.choice(self.stop))]
        text = self.tok.decode(ids, skip_special_tokens=True)
        return text, self.gold("", text), len(ids)

    def pairs(self, n: int, keep_shorter: float, noise: float) -> list[dict]:
        rows = []
        while len(rows) < n:
            a, b = self.response(), self.response()
            if abs(a[1] - b[1]) < 0.02:
                continue
            chosen, rejected = (a, b) if a[1] > b[1] else (b, a)
            if chosen[2] <= rejected[2] and self.rng.uniform() >= keep_shorter:
                continue  # length bias by selection: the better response is usually the longer one
            if self.rng.uniform() < noise:
                chosen, rejected = rejected, chosen
            rows.append({"prompt": str(self.rng.choice(self.prompts)), "chosen": chosen[0], "rejected": rejected[0],
                         "chosen_gold": chosen[1], "rejected_gold": rejected[1],
                         "chosen_policy_tokens": chosen[2], "rejected_policy_tokens": rejected[2]})
        return rows


def train_rms(args, work: Path, train_rows: list[dict], test_path: Path) -> dict:
    import torch

    from alignray.rewards.backbones import TinyModelSpec
    from alignray.rewards.cli import rm_eval_main
    from alignray.rewards.preference_data import load_preferences
    try:  # the rm training modules moved to alignray.rewards.training
        from alignray.rewards.training.config import RewardTrainConfig
        from alignray.rewards.training.loop import train_reward_model
    except ImportError:
        from alignray.rewards.train import train_reward_model
        from alignray.rewards.train_config import RewardTrainConfig

    tok_dir = work / "byte_tokenizer"
    byte_tokenizer().save_pretrained(tok_dir)
    train_path = work / "train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    tok = byte_tokenizer()
    data = load_preferences(str(train_path), computed=["length_tokens"], tokenizer=tok)
    tiny = TinyModelSpec(arch="bert", hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, tokenizer=str(tok_dir))
    base = {"tiny_model": tiny, "epochs": args.rm_epochs, "batch_size": 64, "lr": 1e-3, "max_length": 224,
            "seed": args.seed, "mmd_attribute": "policy_tokens", "mmd_bins": "quantile", "mmd_num_bins": 10,
            "mmd_mode": "conditional", "cf_weight": 0.0}
    out = {}
    for kind in ("bt", "causal"):
        started = time.time()
        torch.manual_seed(args.seed)
        lam = args.mmd_lambda if args.mmd_lambda == "auto" else float(args.mmd_lambda)
        cfg = RewardTrainConfig(kind=kind, mmd_lambda=lam if kind == "causal" else 0.0, **base)
        model = train_reward_model(cfg, data, tokenizer=tok)
        model.save(work / kind)
        print(f"trained the {kind} RM in {time.time() - started:.0f} s: rm eval (test pairs, length ⟂ gold)")
        ev = rm_eval_main(str(work / kind), str(test_path), out=str(work / f"eval_{kind}.json"),
                          baseline=str(work / "bt") if kind == "causal" else None)
        out[kind] = {"accuracy": ev["accuracy"], "spearman_gold": ev["spearman"]["gold"],
                     "spearman_length": {a: ev["spearman"][a] for a in LENGTHS},
                     "bias_gap_length": {a: ev["bias_gap"].get(a) for a in LENGTHS},
                     "mmd_lambda": getattr(model, "metadata", {}).get("mmd_lambda", 0.0),
                     "reward_std": ev.get("reward_std"), "seconds": round(time.time() - started, 1)}
    return out


def policy_config(args, rm_dir: Path) -> dict:
    tok = byte_tokenizer()
    return {
        "model": {"tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                           "num_attention_heads": 2}, "seed": args.seed},
        "data": {"prompts": "builtin:vowels"},
        "rollout": {"engine": "hf", "num_workers": 1, "samples_per_prompt": 4, "max_new_tokens": args.max_new_tokens,
                    "temperature": 1.0, "stop_token_ids": byte_ids(tok, STOP_BYTES)},
        "reward": {"num_workers": 1, "scorers": [  # rm_dir None: the reference run optimises the gold reward itself
            {"name": "proxy", "type": "model", "path": str(rm_dir), "weight": 1.0},
            {"name": "gold", "function": "vowel_ratio", "weight": 0.0, "gold": True}] if rm_dir else [
            {"name": "gold", "function": "vowel_ratio", "weight": 1.0}]},
        "algo": {"name": "grpo", "kl_coef": args.kl_coef},
        "learner": {"num_ranks": 1, "zero_stage": 1, "lr": args.lr},
        "train": {"steps": args.steps, "prompts_per_step": 16, "sync_interval": 1, "seed": args.seed,
                  "save_interval": 0, "loggers": []},
    }


def run_policy(args, work: Path, kind: str) -> list[dict]:
    cfg_path, run_dir = work / f"grpo_{kind}.yaml", work / f"run_{kind}"
    cfg_path.write_text(yaml.safe_dump(policy_config(args, None if kind == "gold" else work / kind), sort_keys=False))
    cli = Path(sys.executable).parent / "alignray"
    cmd = [str(cli), "train", "--config", str(cfg_path), "--run-dir", str(run_dir)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")})
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


LABELS = {"bt": "GRPO vs BT RM", "causal": "GRPO vs causal RM", "gold": "GRPO on gold (reference)"}
COLORS = {"bt": "tab:red", "causal": "tab:blue", "gold": "tab:gray"}
SERIES = {"gold": "reward/gold/mean", "proxy": "reward/proxy/mean", "length": "response_length/mean", "kl": "kl",
          "gap": "reward/proxy_gold_gap/mean"}


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
            "proxy−gold gap |")
    lines = [head, "|---|---|---|---|---|---|"]
    def cell(r: dict, s: str, digits: int = 3) -> str:
        a, b = r[f"{s}_start"], r[f"{s}_end"]
        return "–" if a is None or b is None else f"{a:.{digits}f} → {b:.{digits}f}"

    for r in rows:
        cells = [cell(r, "gold"), cell(r, "proxy"), cell(r, "length", 1), cell(r, "kl"), cell(r, "gap")]
        lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict]], path: Path, title: str, scale: dict[str, float]) -> None:
    """Four panels per step; the proxy reward is divided by its RM's reward std on the test pairs (scales differ)."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot: matplotlib is missing (pip install 'alignray[bench]'); {path} not written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("gold", "gold reward (vowel share)"), ("proxy", "proxy reward / its RM's test std"),
              ("length", "response length (tokens)"), ("kl", "KL to the initial policy (k3)")]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/reward_hacking.json"))
    p.add_argument("--work-dir", default="/tmp/alignray-reward-hacking")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-coef", type=float, default=0.001)
    p.add_argument("--train-pairs", type=int, default=2000)
    p.add_argument("--test-pairs", type=int, default=600)
    p.add_argument("--keep-shorter", type=float, default=0.15, help="share of 'better is shorter' pairs kept")
    p.add_argument("--noise", type=float, default=0.15, help="share of labels flipped")
    p.add_argument("--mmd-lambda", default="1.0", help="causal RM λ: a number or 'auto'")
    p.add_argument("--rm-epochs", type=int, default=3)
    p.add_argument("--window", type=int, default=5, help="steps averaged for the start / end columns")
    p.add_argument("--gold-policy", action="store_true", help="also a reference run optimising the gold reward")
    args = p.parse_args()
    started = time.time()
    from alignray.rewards.bench.common import quiet_transformers

    quiet_transformers()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    maker = TextMaker(byte_tokenizer(), args.max_new_tokens, np.random.default_rng(args.seed))
    train_rows = maker.pairs(args.train_pairs, args.keep_shorter, args.noise)
    test_rows = maker.pairs(args.test_pairs, keep_shorter=1.0, noise=0.0)  # no selection: length ⟂ gold
    test_path = work / "test.jsonl"
    test_path.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    longer = float(np.mean([r["chosen_policy_tokens"] > r["rejected_policy_tokens"] for r in train_rows]))
    gold_wins = float(np.mean([r["chosen_gold"] > r["rejected_gold"] for r in train_rows]))
    print(f"training pairs: chosen longer in {longer:.0%}, chosen has the higher gold in {gold_wins:.0%}")
    rms = train_rms(args, work, train_rows, test_path)
    kinds = ("bt", "causal", "gold") if args.gold_policy else ("bt", "causal")
    curves = {kind: run_policy(args, work, kind) for kind in kinds}
    rows = summarise(curves, args.window)
    text = table(rows, args.window)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"args": vars(args), "train_share_chosen_longer": longer, "train_share_chosen_gold_higher": gold_wins,
               "reward_models": rms, "summary": rows, "table": text,
               "curves": {k: [{s: m.get(key) for s, key in {"step": "step", **SERIES}.items()} for m in v]
                          for k, v in curves.items()},
               "seconds": round(time.time() - started, 1)}
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(curves, out.with_suffix(".png"), f"GRPO against a length-biased BT RM vs the causal RM (seed {args.seed}, "
         f"train pairs: chosen longer {longer:.0%}, {args.noise:.0%} labels flipped; causal λ={args.mmd_lambda})",
         {k: rms[k]["reward_std"] for k in rms})
    print(f"wrote {out} and {out.with_suffix('.png')} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
