"""The TRL side of benchmarks/vs_trl.py, run by the TRL virtual environment's Python (no alignray import).

GRPOTrainer on the same model folder, the built-in vowel prompts and the same two rule rewards (loaded from
alignray's `rewards/functions.py` by path: it has stdlib imports only), beta 0, token-mean ("dapo") loss,
rewards scaled per group, constant lr 1e-3, one optimizer step per generation batch, gradient checkpointing
off (TRL turns it on by default; it only costs time on a model this small). Writes step end times and mean
rewards.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

T0 = time.perf_counter()


def load_functions(path: str):
    spec = importlib.util.spec_from_file_location("alignray_reward_functions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--out-dir", "--result", "--functions", "--prompts-file"):
        parser.add_argument(name)
    for name in ("--steps", "--prompts", "--samples", "--new-tokens", "--threads", "--seed"):
        parser.add_argument(name, type=int)
    args = parser.parse_args()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    fns = load_functions(args.functions)

    def vowels(prompts, completions, **_):
        return [fns.vowel_ratio(p, c) for p, c in zip(prompts, completions, strict=True)]

    def length(prompts, completions, **_):
        return [fns.length_target(p, c, target=24) for p, c in zip(prompts, completions, strict=True)]

    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts_file).read_text().splitlines()
               if line]
    dataset = Dataset.from_dict({"prompt": prompts})
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    completions = args.prompts * args.samples
    cfg = GRPOConfig(
        output_dir=args.out_dir, per_device_train_batch_size=completions, gradient_accumulation_steps=1,
        num_generations=args.samples, max_completion_length=args.new_tokens,
        temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, loss_type="dapo", scale_rewards="group", num_iterations=1, reward_weights=[1.0, 0.2],
        max_steps=args.steps, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
        seed=args.seed or 0, disable_tqdm=True, dataloader_num_workers=0,
        gradient_checkpointing=False,  # TRL's default is on: a tiny model needs no activation memory savings
    )
    ends: list[float] = []
    rewards: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter() - T0)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    trainer = GRPOTrainer(model=model, reward_funcs=[vowels, length], args=cfg, train_dataset=dataset,
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    Path(args.result).write_text(json.dumps({"step_ends": ends, "rewards": rewards,
                                             "wall_in_process_s": time.perf_counter() - T0}))


if __name__ == "__main__":
    main()
