"""alignray vs TRL's GRPOTrainer on the same workload, side by side in one run, alternating rounds:
`python benchmarks/vs_trl.py [--rounds 2] [--steps 40] [--shape quickstart|long] [--out vs_trl.json]`.

Same tiny random Llama (the quickstart's, saved once and loaded by both), byte-level tokenizer, built-in vowel
prompts, rewards (vowel_ratio ×1 + length_target ×0.2), prompts × completions per step, new tokens, GRPO with
kl_coef 0, lr 1e-3, token-mean loss, temperature 1. Each side runs in its own process: alignray in this
virtual environment, TRL in its own (created under ~/.cache/alignray/trl-venv if missing: trl pinned, torch
constrained to the CPU build). Round r runs both sides with seed r (sampling and data order), so the reward
curves average over as many trajectories as rounds. Reported per side and round: steady completions/s (steps
6…N, wall between step ends), end-to-end wall of the process, and the reward curve.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = Path.home() / ".cache" / "alignray" / "trl-venv"
TRL_PIN = "trl==1.16.0"
TORCH_PIN = "torch==2.13.0+cpu"
SHAPES = {  # prompts per step, completions per prompt, new tokens
    "quickstart": (16, 4, 32),
    "long": (8, 8, 96),
}
WARMUP = 5


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    constraints = TRL_VENV / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(constraints), TORCH_PIN, TRL_PIN],
                   check=True)
    return python


def steady_rate(step_ends: list[float], completions: int) -> float:
    """Completions/s between the end of step WARMUP and the last step's end."""
    return completions * (len(step_ends) - WARMUP) / (step_ends[-1] - step_ends[WARMUP - 1])


# ---- the alignray side (run as a subprocess of this file) --------------------------------------------------
def alignray_side(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    from alignray.config import load_config
    from alignray.driver.controller import Controller

    prompts, samples, new_tokens = SHAPES[args.shape]
    cfg = load_config(None, [f"train.steps={args.steps}", f"train.prompts_per_step={prompts}",
                             f"rollout.samples_per_prompt={samples}", f"rollout.max_new_tokens={new_tokens}",
                             "train.progress=false", "train.save_rollouts=false", f"model.path={args.model}",
                             f"train.seed={args.seed}", *args.alignray_override])
    ends, rewards = [], []

    def on_step(m: dict) -> None:
        ends.append(time.perf_counter())
        rewards.append(m["reward/mean"])
    controller = Controller(cfg, args.run_dir)
    try:
        controller.run(on_step=on_step)
    finally:
        controller.close()
    Path(args.result).write_text(json.dumps({"step_ends": [e - t0 for e in ends], "rewards": rewards,
                                             "wall_in_process_s": time.perf_counter() - t0}))


def export_model(folder: Path) -> None:
    """The quickstart's tiny random Llama and byte tokenizer as an HF folder both sides load."""
    from alignray.config import load_config
    from alignray.models import load_policy
    from alignray.tokenizer import build_byte_tokenizer

    cfg = load_config(None, [])
    tok = build_byte_tokenizer()
    load_policy(cfg.model, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)


def run_side(cmd: list[str], result: Path) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(result.read_text())
    out["wall_s"] = wall
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="quickstart")
    parser.add_argument("--out", default=None)
    parser.add_argument("--trl-threads", type=int, default=1,
                        help="torch threads of the TRL process (1: alignray's actors use 1 each; on the "
                             "loaded 2-core machine 2 threads made TRL 9x slower)")
    parser.add_argument("--alignray-override", action="append", default=[],
                        help="an extra alignray override for every alignray side, e.g. train.max_staleness=1 "
                             "(repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE...]",
                        help="a further alignray side in the same alternating rounds, e.g. "
                             "async=train.max_staleness=1,algo.old_logprobs=rollout (repeatable)")
    parser.add_argument("--side", choices=["alignray"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "alignray":
        return alignray_side(args)
    trl_python = ensure_trl_venv()
    work = Path(tempfile.mkdtemp(prefix="alignray-vs-trl-"))
    export_model(work / "model")
    from alignray.data import builtin_prompts

    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                for p in builtin_prompts("vowels")))
    prompts, samples, new_tokens = SHAPES[args.shape]
    completions = prompts * samples
    variants = {"alignray": list(args.alignray_override)}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants[f"alignray:{name}"] = [*args.alignray_override, *overrides.split(",")]
    sides = [*variants, "trl"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        # alternating, so load from other jobs hits all alike
        for side in sides if r % 2 == 0 else sides[::-1]:
            result = work / f"{side.replace(':', '-')}-{r}.json"
            if side in variants:
                cmd = [sys.executable, __file__, "--side", "alignray", "--shape", args.shape, "--steps",
                       str(args.steps), "--model", str(work / "model"), "--run-dir",
                       str(work / f"run-{side.replace(':', '-')}-{r}"), "--result", str(result),
                       "--seed", str(r), *[f"--alignray-override={o}" for o in variants[side]]]
            else:
                cmd = [str(trl_python), str(Path(__file__).with_name("vs_trl_side.py")),
                       "--model", str(work / "model"), "--steps", str(args.steps), "--prompts", str(prompts),
                       "--samples", str(samples), "--new-tokens", str(new_tokens),
                       "--out-dir", str(work / f"trl-{r}"), "--result", str(result),
                       "--functions", str(ROOT / "system" / "rewards" / "functions.py"),
                       "--prompts-file", str(work / "prompts.jsonl"), "--threads", str(args.trl_threads),
                       "--seed", str(r)]
            load = os.getloadavg()[0]
            out = run_side(cmd, result)
            out["steady_completions_per_s"] = steady_rate(out["step_ends"], completions)
            out["load_before"], out["load_after"] = load, os.getloadavg()[0]
            runs[side].append(out)
            print(f"round {r} {side}: {out['steady_completions_per_s']:.1f} completions/s steady, "
                  f"wall {out['wall_s']:.1f} s (first step at {out['step_ends'][0]:.1f} s), reward "
                  f"{out['rewards'][0]:.3f} → {out['rewards'][-1]:.3f}, load {load:.1f} → "
                  f"{out['load_after']:.1f}",
                  flush=True)
    summary: dict = {"sides": {}}
    for side, outs in runs.items():
        curves = list(zip(*[o["rewards"] for o in outs], strict=True))
        summary["sides"][side] = {
            "overrides": variants.get(side),
            "steady_completions_per_s": statistics.mean(o["steady_completions_per_s"] for o in outs),
            "per_round_completions_per_s": [round(o["steady_completions_per_s"], 2) for o in outs],
            "wall_s": statistics.mean(o["wall_s"] for o in outs),
            "per_round_wall_s": [round(o["wall_s"], 1) for o in outs],
            "per_round_first_step_s": [round(o["step_ends"][0], 1) for o in outs],
            "per_round_load": [[round(o["load_before"], 1), round(o["load_after"], 1)] for o in outs],
            "reward_first8": statistics.mean(statistics.mean(c) for c in curves[:8]),
            "reward_last8": statistics.mean(statistics.mean(c) for c in curves[-8:]),
            "per_round_reward_last8": [round(statistics.mean(o["rewards"][-8:]), 4) for o in outs],
            "per_round_reward_final": [round(o["rewards"][-1], 4) for o in outs],
            "reward_curve": [round(statistics.mean(c), 4) for c in curves],
        }
    trl = summary["sides"]["trl"]
    for side in variants:
        s = summary["sides"][side]
        s["speed_ratio"] = s["steady_completions_per_s"] / trl["steady_completions_per_s"]
        s["wall_ratio"] = s["wall_s"] / trl["wall_s"]
    summary["trl_threads"] = args.trl_threads
    summary["seeds"] = list(range(args.rounds))
    summary["load_average"] = os.getloadavg()
    summary["shape"] = {"name": args.shape, "prompts_per_step": prompts, "completions_per_prompt": samples,
                        "new_tokens": new_tokens, "steps": args.steps, "rounds": args.rounds}
    print("| side | steady completions/s (rounds) | × TRL | wall s (rounds) | × TRL | "
          "reward first 8 → last 8 | last 8 (rounds) |\n|---|---|---|---|---|---|---|")
    for side, s in summary["sides"].items():
        print(f"| {side} | {s['steady_completions_per_s']:.1f} "
              f"({', '.join(map(str, s['per_round_completions_per_s']))})"
              f" | {s.get('speed_ratio', 1.0):.2f} | {s['wall_s']:.1f} "
              f"({', '.join(map(str, s['per_round_wall_s']))})"
              f" | {s.get('wall_ratio', 1.0):.2f} | {s['reward_first8']:.3f} → {s['reward_last8']:.3f}"
              f" | {', '.join(f'{x:.3f}' for x in s['per_round_reward_last8'])} |")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
