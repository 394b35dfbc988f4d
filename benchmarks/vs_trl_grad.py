"""One batch through alignray and through TRL's GRPOTrainer code, compared piece by piece:
`python benchmarks/vs_trl_grad.py [--shape long] [--seed 0] [--out vs_trl_grad.json]`.

Where benchmarks/vs_trl.py compares reward curves (random trajectories), this removes the randomness:
alignray's HF engine samples one step's batch (the shape's prompts × samples × new tokens) from the exported
tiny Llama, its reward worker code scores it and its learner code computes the GRPO advantages and the
token-mean policy-loss gradient. The TRL side (trl 1.16 in its own virtual environment, this file run with
`--side trl`) takes the same completion token ids and applies TRL's own rules: the completion mask (everything
after the first EOS masked, the EOS kept), `batch_decode(skip_special_tokens=True)`, the two reward functions
with weights [1, 0.2] summed before the normalisation, the group advantage (mean and Bessel std per group, +
1e-4) copied from `GRPOTrainer._generate_and_score_completions`, and `GRPOTrainer._compute_loss` (loss_type
"dapo", β 0) for the gradient. Reported: whether decoded texts, masks and rewards agree, the largest advantage
difference, and the relative L2 difference of the gradients, with TRL's advantages and with alignray's. The
optimizer is checked in this process: alignray's DeepSpeed config (ZeRO-1, client torch AdamW, clipping 1.0)
against plain torch AdamW with `clip_grad_norm_` (what the HF Trainer runs), five steps with gradient norms
below and above the clip.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WEIGHTS = [1.0, 0.2]


def alignray_batch(model_dir: Path, prompts_file: Path, shape: str, seed: int, out: Path) -> dict:
    """Sample, score and differentiate one batch with alignray's code; the batch and gradient go to `out`."""
    import numpy as np
    import pyarrow as pa
    import torch
    from vs_trl import SHAPES

    from alignray.config import load_config
    from alignray.learner.batch import advantages_for, forward_logprobs, sequences_from_batch
    from alignray.learner.objective import Objective, Tally, batch_counts
    from alignray.models import load_policy
    from alignray.rewards.scorers import build_scorers, score_batch
    from alignray.rollout.engine import SamplingSettings, build_rollout_batch
    from alignray.rollout.hf import HFEngine
    from alignray.schema import list_array
    from alignray.tokenizer import load_tokenizer

    n_prompts, samples, new_tokens = SHAPES[shape]
    cfg = load_config(None, [f"model.path={model_dir}", f"rollout.max_new_tokens={new_tokens}",
                             f"rollout.samples_per_prompt={samples}"])
    tok = load_tokenizer(cfg.model)
    lines = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines() if line]
    prompts = [lines[(seed * n_prompts + i) % len(lines)] for i in range(n_prompts)]
    ptoks = [np.array(tok(p, add_special_tokens=False)["input_ids"], dtype=np.int32) for p in prompts]
    engine = HFEngine(load_policy(cfg.model, len(tok)), tok.pad_token_id, tok.eos_token_id)
    comps = engine.generate(ptoks, SamplingSettings(max_new_tokens=new_tokens, n=samples, seed=seed))
    pb = pa.record_batch({"prompt_id": pa.array(np.arange(n_prompts), pa.int64()),
                          "prompt": pa.array(prompts), "prompt_tokens": list_array(ptoks, pa.int32())})
    rollout = build_rollout_batch(pb, comps, 0, lambda t: tok.decode(t, skip_special_tokens=True))
    scored, _ = score_batch(rollout, build_scorers(cfg.reward.scorers, False), "fail")
    assert [s.weight for s in cfg.reward.scorers] == WEIGHTS
    model = load_policy(cfg.model, len(tok))
    seq = sequences_from_batch(scored, tok.pad_token_id)
    adv, _ = advantages_for(seq, None, None, None, cfg.algo)
    logp, entropy = forward_logprobs(model, seq, 1.0, entropy=True)
    loss = Objective(cfg.algo, 1.0, new_tokens).policy_loss(
        logp, entropy, None, None, seq.rollout_logprobs, adv, seq.response_mask,
        batch_counts(seq.response_mask), Tally())
    loss.backward()
    finish = scored.column("finish_reason").to_pylist()
    torch.save({"prompts": prompts, "prompt_ids": [p.tolist() for p in ptoks], "samples": samples,
                "completion_ids": [c.tokens.tolist() for group in comps for c in group],
                "responses": scored.column("response").to_pylist(),
                "rewards": scored.column("reward").to_numpy().tolist(),
                "advantages": (adv.sum(1) / seq.response_mask.sum(1)).tolist(), "loss": float(loss.detach()),
                "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}, out)
    return {"completions": len(finish), "stopped_at_eos": finish.count("stop"),
            "truncated": finish.count("length"),
            "loss_tokens": float(seq.response_mask.sum()), "alignray_loss": float(loss.detach())}


def optimizer_check(model_dir: Path) -> list[dict]:
    """alignray's DeepSpeed engine (ZeRO-1, torch AdamW, clipping 1.0) vs torch AdamW +
    clip_grad_norm_(1.0)."""
    import copy

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")
    import deepspeed
    from transformers import AutoModelForCausalLM

    from alignray.actors.ranks import deepspeed_config

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    a = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    b = copy.deepcopy(a)
    engine, *_ = deepspeed.initialize(model=a, optimizer=torch.optim.AdamW(a.parameters(), lr=1e-3,
                                                                           weight_decay=0.0),
                                      config=deepspeed_config(32, 1, 1.0, 1))
    opt = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, a.config.vocab_size, (4, 20), generator=gen)
    rows = []
    for scale in (0.3, 5.0, 0.3, 0.3, 20.0):
        w = torch.randn(4, 20, a.config.vocab_size, generator=gen) * scale / 1000
        engine.backward((engine(input_ids=ids).logits * w).sum())
        engine.step()
        (b(input_ids=ids).logits * w).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        diff = max((p - q).abs().max().item() for p, q in zip(engine.module.parameters(), b.parameters(),
                                                              strict=True))
        rows.append({"grad_norm_deepspeed": float(engine.get_global_grad_norm()),
                     "grad_norm_torch": float(norm),
                     "lr_deepspeed": engine.get_lr()[0], "max_abs_param_diff": diff})
    return rows


def trl_side(model_dir: str, batch_file: str, functions: str, result: str) -> None:
    """TRL's rules on the same completion ids (run by the TRL virtual environment's Python)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import nanstd

    torch.set_num_threads(1)
    b = torch.load(batch_file)
    spec = importlib.util.spec_from_file_location("alignray_reward_functions", functions)
    fns = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fns)
    tok = AutoTokenizer.from_pretrained(model_dir)
    g, rows = b["samples"], len(b["completion_ids"])
    width = max(map(len, b["completion_ids"]))

    def vowels(prompts, completions, **_):
        return [fns.vowel_ratio(p, c) for p, c in zip(prompts, completions, strict=True)]

    def length(prompts, completions, **_):
        return [fns.length_target(p, c, target=24) for p, c in zip(prompts, completions, strict=True)]

    cfg = GRPOConfig(output_dir=str(Path(result).parent / "trl-grad"), per_device_train_batch_size=rows,
                     num_generations=g, max_completion_length=width, temperature=1.0, top_p=1.0, top_k=0,
                     learning_rate=1e-3, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                     beta=0.0, loss_type="dapo", scale_rewards="group", reward_weights=WEIGHTS, max_steps=1,
                     report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no")
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                          reward_funcs=[vowels, length], args=cfg, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": b["prompts"]}))
    prompt_lists = [p for p in b["prompt_ids"] for _ in range(g)]
    p_width = max(map(len, prompt_lists))
    pad = tok.pad_token_id
    prompt_ids = torch.tensor([[pad] * (p_width - len(p)) + p for p in prompt_lists])
    prompt_mask = (torch.arange(p_width)[None]
                   >= torch.tensor([p_width - len(p) for p in prompt_lists])[:, None]).long()
    completion_ids = torch.tensor([c + [pad] * (width - len(c)) for c in b["completion_ids"]])
    # GRPOTrainer._generate_single_turn: mask everything after the first EOS
    is_eos = torch.isin(completion_ids, torch.tensor(trainer.eos_token_ids))
    eos_idx = torch.full((rows,), width, dtype=torch.long)
    eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
    completion_mask = (torch.arange(width)[None] <= eos_idx[:, None]).int()
    kept = [c[m].tolist() for c, m in zip(completion_ids, completion_mask.bool(), strict=True)]
    completions = tok.batch_decode(kept, skip_special_tokens=True)
    prompts = [p for p in b["prompts"] for _ in range(g)]
    per_func = torch.tensor([vowels(prompts, completions), length(prompts, completions)]).T
    # GRPOTrainer._generate_and_score_completions, multi_objective_aggregation "sum_then_normalize", scale
    # "group"
    rewards = (per_func * torch.tensor(WEIGHTS)[None]).nansum(dim=1)
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g)
    std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g)
    advantages = (rewards - mean) / (std + 1e-4)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    ref = b["grads"]
    ref_norm = torch.sqrt(sum((v ** 2).sum() for v in ref.values()))

    def gradient_error(adv: torch.Tensor) -> tuple[float, float]:
        trainer.model.zero_grad()
        inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                  "completion_mask": completion_mask, "advantages": adv,
                  "num_items_in_batch": completion_mask.sum().float()}
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        err = torch.sqrt(sum(((p.grad - ref[n]) ** 2).sum() for n, p in trainer.model.named_parameters()))
        return float(loss.detach()), float(err / ref_norm)

    trl_loss, err_trl_adv = gradient_error(advantages)
    _, err_same_adv = gradient_error(torch.tensor(b["advantages"]))
    Path(result).write_text(json.dumps({
        "decoded_text_equal": completions == b["responses"],
        "loss_tokens_trl": int(completion_mask.sum()), "loss_tokens_alignray": sum(map(len,
                                                                                       b["completion_ids"])),
        "max_abs_reward_diff": float((rewards - torch.tensor(b["rewards"])).abs().max()),
        "max_abs_advantage_diff": float((advantages - torch.tensor(b["advantages"])).abs().max()),
        "min_group_std": float(std.min()), "trl_loss": trl_loss, "grad_norm": float(ref_norm),
        "grad_rel_err_trl_advantages": err_trl_adv, "grad_rel_err_same_advantages": err_same_adv}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--side", choices=["trl"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--functions", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "trl":
        return trl_side(args.model, args.batch, args.functions, args.result)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.path.insert(0, str(ROOT))
    import torch
    from vs_trl import ensure_trl_venv, export_model

    from alignray.data import builtin_prompts

    torch.set_num_threads(1)
    trl_python = ensure_trl_venv()
    work = Path(tempfile.mkdtemp(prefix="alignray-vs-trl-grad-"))
    export_model(work / "model")
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in builtin_prompts("vowels")))
    summary = {"shape": args.shape, "seed": args.seed,
               **alignray_batch(work / "model", prompts_file, args.shape, args.seed, work / "batch.pt")}
    subprocess.run([str(trl_python), __file__, "--side", "trl", "--model", str(work / "model"), "--batch",
                    str(work / "batch.pt"),
                    "--functions", str(ROOT.parent / "system" / "rewards" / "functions.py"),
                    "--result", str(work / "trl.json")], check=True, capture_output=True, text=True)
    summary.update(json.loads((work / "trl.json").read_text()))
    summary["optimizer"] = optimizer_check(work / "model")
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
