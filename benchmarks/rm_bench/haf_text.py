"""haf-text: BT vs HAF-RM (BT + α·DPO on a shared trunk) on real sentences with MiniLM, in the regime the
HAF-RM paper reports a gain in (arXiv 2407.04185: little preference data, evaluation off the training
distribution).

Data (text_grammar.py's restaurant-advice answers, seeded, no attribute sentence): 4 content sentences, q of
them helpful (q ∈ 0..4 is the hidden quality; the higher q wins). The sentence templates are split: training
and the in-distribution test use helpful templates 0-4, vague templates 0-4 and cities 0-5; the shifted test
uses the other templates (helpful 5-9, vague 5-9) and cities 6-11 — unseen wording of the same notion of
quality. Training labels: a share `noise` flipped.

Models: the whole pretrained MiniLM is fine-tuned as one trunk, loaded as a causal LM (`is_decoder=True`, so
its LM head predicts the next token from the left context only, which DPO needs; the LM head's transform layer
is new, its output layer is tied to the pretrained embeddings), with HAF-RM's zero-initialised reward head
read at the last token. BT = reward head only (α = 0); HAF = BT + α·DPO(β) against the frozen initial trunk —
the same network and optimiser, only the loss differs (`kind: haf`, as `rm train` runs it). Accuracy on clean
test labels, per seed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import alignray.rm.text_grammar as g
from alignray.rm.evaluate import pairwise_accuracy
from alignray.rm.preference_data import PreferenceData
from rm_bench.common import finish, format_rows, quiet_transformers
from rm_bench.features import cache_dir, minilm_path

SPLITS = {"train": (range(0, 5), range(0, 5), range(0, 6)),
          "shifted": (range(5, 10), range(5, 10), range(6, 12))}


def _answer(rng: np.random.Generator, split: str, city: str, quality: int) -> str:
    good_ids, bad_ids, _ = SPLITS[split]
    slots = {"city": city, "name": g.NAMES[rng.integers(len(g.NAMES))]}
    good = rng.choice(list(good_ids), size=quality, replace=False)
    bad = rng.choice(list(bad_ids), size=4 - quality, replace=False)
    content = [g._fill(g.GOOD[i], rng, slots) for i in good] + [g._fill(g.BAD[i], rng, slots) for i in bad]
    return " ".join(content[i] for i in rng.permutation(4))


def make_data(n: int, seed: int, split: str, noise: float) -> PreferenceData:
    rng = np.random.default_rng(seed)
    cities = SPLITS[split][2]
    prompts, chosen, rejected, quality = [], [], [], []
    while len(prompts) < n:
        qa, qb = rng.integers(0, 5, size=2)
        if qa == qb:
            continue
        city = g.CITIES[int(rng.choice(list(cities)))]
        better, worse = (_answer(rng, split, city, int(q)) for q in sorted((qa, qb), reverse=True))
        flip = rng.uniform() < noise
        prompts.append(g.PROMPTS[rng.integers(len(g.PROMPTS))].format(city=city))
        chosen.append(worse if flip else better)
        rejected.append(better if flip else worse)
        quality.append(sorted((int(qa), int(qb)), reverse=not flip))
    return PreferenceData(prompts, chosen, rejected, {"quality": np.array(quality)},
                          source=f"haf-text {split}")


def causal_minilm() -> str:
    """The pretrained MiniLM saved once with `is_decoder=True` (a causal LM trunk for HAF's DPO term)."""
    from transformers import AutoConfig, AutoTokenizer

    path = cache_dir() / "minilm-causal"
    if not (path / "config.json").exists():
        from transformers import AutoModelForCausalLM

        source = minilm_path()
        config = AutoConfig.from_pretrained(source, is_decoder=True)
        AutoModelForCausalLM.from_pretrained(source, config=config).save_pretrained(path)
        AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return str(path)


def _train_fns():
    from alignray.rm import RewardTrainConfig
    from alignray.rm.loop import train_reward_model

    return RewardTrainConfig, train_reward_model


def run_task(sizes: list[int], seeds: list[int], alphas: list[float], noise: float = 0.1, n_test: int = 300,
             epochs: int = 8) -> dict[str, Any]:
    quiet_transformers()
    import torch

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    RewardTrainConfig, train_reward_model = _train_fns()
    base_model = causal_minilm()
    tests = {"in_distribution": make_data(n_test, 101, "train", 0.0), "shifted": make_data(n_test, 102,
                                                                                           "shifted", 0.0)}
    per_seed = []
    for size in sizes:
        for seed in seeds:
            train = make_data(size, seed, "train", noise)
            for alpha in alphas:
                started = time.time()
                cfg = RewardTrainConfig(kind="haf", base_model=base_model, haf_alpha=alpha, dpo_beta=0.1,
                                        epochs=epochs, batch_size=16, lr=5e-5, max_length=160, seed=seed)
                model = train_reward_model(cfg, train)
                row = {"train_pairs": size, "seed": seed, "model": "BT" if alpha == 0 else f"HAF α={alpha:g}",
                       "alpha": alpha}
                for split, data in tests.items():
                    rc = model.score(data.prompts, data.chosen, 64)["reward"]
                    rr = model.score(data.prompts, data.rejected, 64)["reward"]
                    row[f"{split}_acc"] = pairwise_accuracy(rc, rr)
                row["seconds"] = round(time.time() - started, 1)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                per_seed.append(row)
    rows = []
    for size in sizes:
        for alpha in alphas:
            runs = [r for r in per_seed if r["train_pairs"] == size and r["alpha"] == alpha]
            rows.append({"train_pairs": size, "model": runs[0]["model"],
                         **{f"{s}_acc": float(np.mean([r[f"{s}_acc"] for r in runs])) for s in tests},
                         **{f"{s}_per_seed": "/".join(f"{r[f'{s}_acc']:.3f}" for r in runs) for s in tests}})
    return {"rows": rows, "per_seed": per_seed, "seeds": seeds, "noise": noise, "n_test": n_test,
            "epochs": epochs, "base_model": Path(base_model).name}


def run(out: str | None = None, quick: bool = False) -> dict[str, Any]:
    started = time.time()
    if quick:
        results = run_task([32], [0], [0.0, 0.2], n_test=100, epochs=6)
    else:
        results = run_task([32, 128], [0, 1], [0.0, 0.2])
    table = format_rows(f"haf-text (MiniLM trunk fine-tuned as a causal LM; {results['noise']:.0%} train "
                        "labels flipped; shifted = unseen sentence templates and cities)", results["rows"],
                        ["train_pairs", "model", "in_distribution_acc", "shifted_acc",
                         "in_distribution_per_seed", "shifted_per_seed"])
    return finish("haf-text", results, table, out, started)
