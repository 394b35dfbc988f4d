"""HAF-RM where the paper trains it — a decoder backbone with an LM head — against BT on the same network, on
the reward-hacking lab's preference pairs.

    python benchmarks/haf_decoder.py [--seeds 0 1 2] [--out benchmarks/results/haf_decoder.json]

Per seed: the lab's pairs (benchmarks/reward_hacking.py: half of them two answers of the initial policy, the
rest synthetic; the better answer is usually the longer; 15 % of labels flipped), a tiny random Llama shaped
like the lab's policy (hidden 128, 2 layers) over the byte tokenizer as the trunk, trained 3 epochs as BT
(`kind: bt`) and as HAF-RM (`kind: haf`: BT on the reward head + α·DPO on the LM head, α = 0.2, β = 0.1,
the reference the network at initialisation). Accuracy on the 600 clean test pairs, all and per source. No
pretrained causal LM can be loaded on a machine without a hub, so the trunk starts random, unlike the paper's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import reward_hacking as lab

ROOT = Path(__file__).resolve().parent.parent


def lab_args(seed: int) -> argparse.Namespace:
    """The lab's defaults (reward_hacking.py), for its pairs and its policy's samples."""
    return argparse.Namespace(seed=seed, max_new_tokens=48, train_pairs=2000, test_pairs=600,
                              policy_share=0.5, keep_shorter=0.15, noise=0.15, kl_coef=0.001, lr=1e-3,
                              steps=40, warn_at=3.0, length_at=0.5)


def run_seed(seed: int, work: Path, haf_alpha: float) -> list[dict]:
    import torch

    from alignray.rm.backbones import TinyModelSpec
    from alignray.rm.config import RewardTrainConfig
    from alignray.rm.loop import train_reward_model
    from alignray.rm.preference_data import load_preferences

    args, tok = lab_args(seed), lab.byte_tokenizer()
    samples = lab.initial_policy_samples(args, 4 * (args.train_pairs + args.test_pairs))
    maker = lab.TextMaker(tok, args.max_new_tokens, np.random.default_rng(seed), args.policy_share, samples)
    train_rows = maker.pairs(args.train_pairs, args.keep_shorter, args.noise)
    test_rows = maker.pairs(args.test_pairs, keep_shorter=1.0, noise=0.0)
    work.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(work / "tokenizer")
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    data = load_preferences(str(work / "train.jsonl"), computed=["length_tokens"], tokenizer=tok)
    trunk = TinyModelSpec(arch="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=256,
                          tokenizer=str(work / "tokenizer"))
    prompts = [r["prompt"] for r in test_rows]
    from_policy = np.array([r["chosen_from_policy"] for r in test_rows])
    rows = []
    for kind, extra in (("bt", {}), ("haf", {"haf_alpha": haf_alpha})):
        started = time.time()
        torch.manual_seed(seed)
        cfg = RewardTrainConfig(kind=kind, tiny_model=trunk, epochs=3, batch_size=64, lr=1e-3, max_length=224,
                                seed=seed, **extra)
        model = train_reward_model(cfg, data, tokenizer=tok)
        won = (model.score(prompts, [r["chosen"] for r in test_rows], 64)["reward"]
               > model.score(prompts, [r["rejected"] for r in test_rows], 64)["reward"])
        rows.append({"rm": kind, "seed": seed, "accuracy": float(won.mean()),
                     "accuracy_policy_pairs": float(won[from_policy].mean()),
                     "accuracy_synthetic_pairs": float(won[~from_policy].mean()),
                     "seconds": round(time.time() - started, 1)})
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| RM | seeds | accuracy: all | initial-policy pairs | synthetic pairs |",
             "|---|---|---|---|---|"]
    for kind in ("bt", "haf"):
        mine = [r for r in rows if r["rm"] == kind]
        cells = []
        for col in ("accuracy", "accuracy_policy_pairs", "accuracy_synthetic_pairs"):
            values = [r[col] for r in mine]
            se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
            cells.append(f"{np.mean(values):.3f} ± {se:.3f} ({' / '.join(f'{v:.3f}' for v in values)})")
        lines.append(f"| {kind} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--haf-alpha", type=float, default=0.2)
    p.add_argument("--work-dir", default="/tmp/alignray-haf-decoder")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/haf_decoder.json"))
    args = p.parse_args()
    rows = [row for seed in args.seeds for row in run_seed(seed, Path(args.work_dir) / f"seed{seed}",
                                                           args.haf_alpha)]
    text = table(rows)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "table": text}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
