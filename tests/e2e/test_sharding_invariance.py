"""The learner's gradient does not depend on sharding: 2 DeepSpeed ranks (gloo) × several micro-batches give
the gradient of one big batch, for every algorithm × loss_agg × kl_mode (relative error ≤ 1e-5).

The reference is written independently of `alignray.learner.objective`: a full log-softmax over the whole
batch, advantages from `compute_advantages` on the whole batch, and the mean-form `policy_loss` / `aggregate`
/ `kl_loss` / `value_loss`. The two ranks are torch.multiprocessing processes; one process group and one set
of DeepSpeed engines (ZeRO-0, learning rate 0, so the weights never move) serve all 36 combinations; ZeRO-1
and ZeRO-3 engines check the gradient norm they report. Multi-turn episodes (a `loss_mask` with observation
tokens 0) give the one-big-batch gradient of their policy tokens only: the reference builds that mask from the
Arrow column itself.
"""

from __future__ import annotations

import itertools
import json
import os
import socket

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.multiprocessing as mp

from alignray.schema import EPISODE_FIELDS, SCHEMAS, list_array

pytestmark = pytest.mark.slow  # starts 2 DeepSpeed ranks

ALGOS = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo"]
AGGS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
KL_MODES = ["reward", "loss"]
VOCAB, NORM_LEN, TOL = 40, 8, 1e-5


def scored_batch(seed: int = 0, version: int = 0, episodes: bool = False) -> pa.RecordBatch:
    """5 prompt groups of sizes 3, 1, 4, 2, 3 (odd count: the ranks get unequal shares), ragged prompts and
    responses (1..8 tokens), random rewards and engine log-probs (so TIS weights vary). `episodes`: the
    episode columns, a random `loss_mask` (each token the policy's with probability 0.6, the first always),
    log-probs 0 where it is 0."""
    rng = np.random.default_rng(seed)
    sizes = [3, 1, 4, 2, 3]
    pid = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)
    prompts = {p: rng.integers(3, VOCAB, rng.integers(2, 6)) for p in set(pid.tolist())}
    responses = [rng.integers(3, VOCAB, rng.integers(1, NORM_LEN + 1)) for _ in pid]
    n = len(pid)
    cols = {
        "prompt_id": pa.array(pid, pa.int64()), "prompt": pa.array([""] * n),
        "prompt_tokens": list_array([prompts[p] for p in pid], pa.int32()),
        "sample_index": pa.array(np.concatenate([np.arange(s) for s in sizes]), pa.int32()),
        "response": pa.array([""] * n), "response_tokens": list_array(responses, pa.int32()),
        "response_logprobs": list_array([-rng.uniform(2.5, 4.5, len(r)) for r in responses], pa.float32()),
        "policy_version": pa.array(np.full(n, version), pa.int64()), "finish_reason": pa.array(["stop"] * n),
        "reward": pa.array(rng.normal(size=n), pa.float32()),
    }
    if not episodes:
        return pa.RecordBatch.from_arrays(list(cols.values()), schema=SCHEMAS["scored"])
    masks = [np.r_[1, rng.random(len(r) - 1) < 0.6].astype(np.int8) for r in responses]
    logprobs = [lp * m for lp, m in zip(cols["response_logprobs"].to_pylist(), masks, strict=True)]
    cols.update({"response_logprobs": list_array(logprobs, pa.float32()),
                 "loss_mask": list_array(masks, pa.int8()), "num_turns": pa.array(np.ones(n), pa.int32()),
                 "turn_rewards": list_array([[0.0]] * n, pa.float32()),
                 "env_error": pa.nulls(n, pa.string())})
    schema = pa.schema(list(SCHEMAS["scored"]) + EPISODE_FIELDS)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def reference_mask(batch: pa.RecordBatch) -> torch.Tensor:
    """[B, T] 1 on the response tokens the loss counts (the policy's, where `loss_mask` says), from Arrow."""
    tokens = batch.column("response_tokens").to_pylist()
    masks = batch.column("loss_mask").to_pylist() if "loss_mask" in batch.schema.names else None
    out = torch.zeros(len(tokens), max(len(r) for r in tokens))
    for i, r in enumerate(tokens):
        out[i, :len(r)] = torch.tensor(masks[i] if masks else [1] * len(r), dtype=torch.float32)
    return out


def make_cfg(algo: str = "grpo", agg: str = "token_mean", kl_mode: str = "loss", **extra):
    from alignray.config import Config

    return Config.model_validate({
        "model": {"tiny": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "max_position_embeddings": 32}},
        "rollout": {"max_new_tokens": NORM_LEN, "temperature": 0.9},
        "learner": {"micro_batch_size": 2, "zero_stage": 0, "grad_clip": 1e6},
        "algo": {"name": algo, "loss_agg": agg, "kl_mode": kl_mode, "kl_coef": 0.1, "entropy_coef": 0.01,
                 "tis_cap": 1.5, "gamma": 0.9 if algo == "ppo" else 1.0, **extra},
    })


def reference_grads(cfg, policy, reference, critic, batch: pa.RecordBatch, rows: np.ndarray | None = None):
    """One-big-batch gradients (policy, critic), the loss over `rows` (default: all) with advantages of the
    whole batch."""
    from reference_losses import aggregate, kl_loss, policy_loss, value_loss

    from alignray.algorithms.advantages import compute_advantages
    from alignray.algorithms.kl import kl_estimate
    from alignray.algorithms.logprobs import entropy_from_logits
    from alignray.algorithms.losses import truncated_is_weights
    from alignray.learner.batch import sequences_from_batch

    a, temp = cfg.algo, cfg.rollout.temperature
    seq = sequences_from_batch(batch, 0)
    mask = reference_mask(batch)

    def logp_entropy(model):
        logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits
        z = logits.gather(1, seq.logit_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])) / temp
        lp = (torch.log_softmax(z, -1).gather(-1, seq.response_tokens.unsqueeze(-1)).squeeze(-1)
              * mask)
        return lp, entropy_from_logits(z) * mask

    def values_of(model):
        out = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask).logits.squeeze(-1)
        return out.gather(1, seq.logit_index) * mask

    with torch.no_grad():
        old, _ = logp_entropy(policy)
        if a.old_logprobs == "rollout":
            old = seq.rollout_logprobs * mask
        ref, _ = logp_entropy(reference)
        old_values = values_of(critic) if critic is not None else None
    token_kl = kl_estimate(old, ref, a.kl_estimator) * mask if a.kl_mode == "reward" else None
    adv, returns = compute_advantages(a.name, seq.rewards, seq.group_ids, mask, token_kl=token_kl,
                                      kl_coef=a.kl_coef if token_kl is not None else 0.0, values=old_values,
                                      gamma=a.gamma, lam=a.lam)
    sel = torch.as_tensor(rows if rows is not None else np.arange(len(seq)), dtype=torch.long)
    logp, ent = logp_entropy(policy)
    logp, ent, m, old_s, ref_s = logp[sel], ent[sel], mask[sel], old[sel], ref[sel]
    w = truncated_is_weights(old_s, seq.rollout_logprobs[sel], m, a.tis_cap)
    loss, _ = policy_loss(logp, old_s, adv[sel], m, clip_eps=a.clip_eps, agg=a.loss_agg, is_weights=w,
                          norm_len=NORM_LEN)
    loss = loss - a.entropy_coef * aggregate(ent, m, a.loss_agg, NORM_LEN)
    if a.kl_mode == "loss":
        loss = loss + a.kl_coef * kl_loss(logp, ref_s, m, a.kl_estimator, a.loss_agg, NORM_LEN)
    grads = {"policy": torch.autograd.grad(loss, list(policy.parameters()))}
    if critic is not None:
        v_loss = value_loss(values_of(critic)[sel], old_values[sel], returns[sel], m, a.value_clip,
                            "token_mean")
        grads["critic"] = torch.autograd.grad(v_loss, list(critic.parameters()))
    return grads


def rel_err(got, want) -> float:
    g, w = torch.cat([x.flatten() for x in got]), torch.cat([x.flatten() for x in want])
    return float((g - w).norm() / w.norm())


def _rank_main(rank: int, world: int, port: int, out_path: str) -> None:
    """One DeepSpeed rank: every combination through LearnerStep, compared with the one-big-batch gradient."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(1)
    import deepspeed

    from alignray.actors.learner import ds_config, init_process_group
    from alignray.learner.train_step import LearnerStep, plan_step
    from alignray.models import load_critic, load_policy

    init_process_group(rank, world, "127.0.0.1", port, "gloo", use_gpu=False)
    base = make_cfg()
    policy = load_policy(base.model, VOCAB)
    reference = load_policy(base.model, VOCAB).requires_grad_(False)
    with torch.no_grad():  # the reference differs from the policy, so KL terms have real gradients
        gen = torch.Generator().manual_seed(1)
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    engines = {}
    for name, model in (("policy", policy), ("critic", load_critic(base.model, VOCAB))):
        optim = torch.optim.SGD(model.parameters(), lr=0.0)
        engines[name], *_ = deepspeed.initialize(model=model, optimizer=optim, config=ds_config(base, world))

    def run(cfg, batch, version=0):
        """LearnerStep's reduced gradients of each mini-batch."""
        critic = engines["critic"] if cfg.algo.name == "ppo" else None
        step = LearnerStep(cfg, engines["policy"], reference, critic, rank, world, 0, torch.device("cpu"))
        seen = []

        def capture(k: int) -> None:
            seen.append({n: [p.grad.detach().clone() for p in e.module.parameters()]
                         for n, e in engines.items() if n == "policy" or critic is not None})

        stats = step.run(batch, version, before_optimizer_step=capture)
        return seen, stats

    results = []
    batch = scored_batch()
    combos = [(a, g, k, {}) for a, g, k in itertools.product(ALGOS, AGGS, KL_MODES)]
    combos.append(("grpo", "token_mean", "loss", {"off_policy": True}))
    combos.append(("reinforce_pp", "token_mean", "reward", {"old_logprobs": "rollout"}))
    for algo, agg, kl_mode, opts in combos:
        cfg = make_cfg(algo, agg, kl_mode, **{k: v for k, v in opts.items() if k != "off_policy"})
        seen, stats = run(cfg, batch, version=1 if opts.get("off_policy") else 0)
        want = reference_grads(cfg, policy, reference, engines["critic"].module if algo == "ppo" else None,
                               batch)
        results.append({"combo": [algo, agg, kl_mode, opts], "stats": stats,
                        **{n: rel_err(seen[0][n], want[n]) for n in want}})
    # Mini-batches: two optimizer steps, each the one-big-batch gradient of its half of the groups, with
    # advantages whitened over the whole batch.
    for algo in ("grpo", "reinforce_pp"):
        cfg = make_cfg(algo, "seq_mean_token_mean", "loss", mini_batches=2)
        seen, stats = run(cfg, batch)
        for k in range(2):
            rows = np.concatenate([np.concatenate(plan_step(batch.column("prompt_id").to_numpy(), r, world, 2,
                                                            10**6)[k])
                                   for r in range(world)]).astype(np.int64)
            want = reference_grads(cfg, policy, reference, None, batch, rows=np.sort(rows))
            results.append({"combo": [algo, "mini_batch", k], "stats": stats,
                            "policy": rel_err(seen[k]["policy"], want["policy"])})
    # Packed micro-batches (the default, above) against padded ones, packed rows of ≤ 8 tokens (several rows
    # with padding tails), and micro-batches chosen by tokens (ranks get unequal micro-batch counts, padded
    # with empty ones): the one-big-batch gradient every time.
    for learner in ({"packing": False}, {"micro_batch_tokens": 12}, {"pack_row_tokens": 8},
                    {"micro_batch_tokens": 12, "packing": False}):
        cfg = make_cfg("ppo", "token_mean", "loss")
        for key, value in learner.items():
            setattr(cfg.learner, key, value)
        seen, stats = run(cfg, batch)
        want = reference_grads(cfg, policy, reference, engines["critic"].module, batch)
        results.append({"combo": ["ppo", "learner", learner], "stats": stats,
                        **{n: rel_err(seen[0][n], want[n]) for n in want}})
    # Multi-turn episodes: observation tokens masked out (loss_mask), every algorithm × loss_agg, packed and
    # padded micro-batches; and the mask matters (the gradient without it differs).
    episodes = scored_batch(seed=2, episodes=True)
    layouts = [("ppo", "token_mean", {"packing": False}),
               ("grpo", "seq_mean_token_mean", {"pack_row_tokens": 8, "micro_batch_tokens": 12})]
    for algo, agg, learner in [*((a, g, {}) for a, g in itertools.product(ALGOS, AGGS)), *layouts]:
        cfg = make_cfg(algo, agg, "loss")
        for key, value in learner.items():
            setattr(cfg.learner, key, value)
        seen, stats = run(cfg, episodes)
        want = reference_grads(cfg, policy, reference, engines["critic"].module if algo == "ppo" else None,
                               episodes)
        results.append({"combo": [algo, "episodes", agg, learner], "stats": stats,
                        **{n: rel_err(seen[0][n], want[n]) for n in want}})
    unmasked = episodes.drop_columns([f.name for f in EPISODE_FIELDS])
    cfg = make_cfg("grpo", "token_mean", "loss")
    results.append({"combo": ["grpo", "mask_matters"], "policy": rel_err(
        reference_grads(cfg, policy, reference, None, unmasked)["policy"],
        reference_grads(cfg, policy, reference, None, episodes)["policy"])})
    # ZeRO-1 and ZeRO-3 (the gradients live in partitions there): the global gradient norm DeepSpeed reports
    # equals the one-big-batch gradient's norm.
    for stage, algo in ((1, "reinforce_pp"), (3, "grpo")):
        cfg = make_cfg(algo, "seq_mean_token_mean", "loss")
        cfg.learner.zero_stage = stage
        model = load_policy(base.model, VOCAB)
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                          config=ds_config(cfg, world))
        stats = LearnerStep(cfg, engine, reference, None, rank, world, 0, torch.device("cpu")).run(batch, 0)
        want = reference_grads(cfg, load_policy(base.model, VOCAB), reference, None, batch)["policy"]
        norm = float(torch.cat([g.flatten() for g in want]).norm())
        results.append({"combo": [algo, "zero", stage], "stats": stats,
                        "policy": abs(stats["grad_norm"] - norm) / norm})
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("shard") / "results.json"
    mp.start_processes(_rank_main, args=(2, free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return json.loads(out.read_text())


def test_every_combination_gives_the_one_big_batch_gradient(sharded_results):
    combos = [r for r in sharded_results
              if r["combo"][1] not in ("mini_batch", "zero", "learner", "episodes", "mask_matters")]
    assert len(combos) == len(ALGOS) * len(AGGS) * len(KL_MODES) + 2
    bad = [(r["combo"], r["policy"], r.get("critic")) for r in combos
           if r["policy"] > TOL or r.get("critic", 0.0) > TOL]
    assert not bad, bad
    assert all("critic" in r for r in combos if r["combo"][0] == "ppo")


def test_only_the_needed_forwards_run(sharded_results):
    by_combo = {(r["combo"][0], r["combo"][2], bool(r["combo"][3])): r["stats"] for r in sharded_results
                if r["combo"][1] == "token_mean" and "old_logprobs" not in r["combo"][3]}
    # on-policy, one update, KL in the loss: the training forward doubles as π_old
    assert by_combo[("grpo", "loss", False)]["learner/old_forward"] == 0.0
    assert by_combo[("grpo", "reward", False)]["learner/old_forward"] == 1.0  # KL-in-reward needs π_old first
    assert by_combo[("grpo", "loss", True)]["learner/old_forward"] == 1.0  # off-policy batch
    assert all(s["learner/ref_forward"] == 1.0 for s in by_combo.values())  # kl_coef > 0 here
    engine = [r["stats"] for r in sharded_results if isinstance(r["combo"][-1], dict) and r["combo"][-1]
              .get("old_logprobs")]
    # π_old = the engine's log-probs, even with KL in the reward
    assert engine[0]["learner/old_forward"] == 0.0


def test_mini_batches_take_one_step_each_with_the_mini_batch_gradient(sharded_results):
    mini = [r for r in sharded_results if r["combo"][1] == "mini_batch"]
    assert len(mini) == 4
    assert all(r["policy"] <= TOL for r in mini), mini
    assert all(r["stats"]["learner/optimizer_steps"] == 2.0 for r in mini)
    # the 2nd update needs the pre-update π_old
    assert all(r["stats"]["learner/old_forward"] == 1.0 for r in mini)
    assert all(r["stats"]["learner/lr"] == 0.0 for r in mini)  # the rate the engines' optimizer steps with


def test_padded_and_token_planned_micro_batches_give_the_one_big_batch_gradient(sharded_results):
    layouts = [r for r in sharded_results if r["combo"][1] == "learner"]
    assert len(layouts) == 4
    bad = [(r["combo"], r["policy"], r["critic"]) for r in layouts if r["policy"] > TOL or r["critic"] > TOL]
    assert not bad, bad
    assert all(r["stats"]["learner/tokens"] > 0 and r["stats"]["learner/tokens_per_s"] > 0 for r in layouts)
    assert all("learner/mfu" not in r["stats"] for r in layouts)  # CPU: no known peak, no MFU


def test_zero_1_and_3_report_the_one_big_batch_gradient_norm(sharded_results):
    zero = [r for r in sharded_results if r["combo"][1] == "zero"]
    assert [r["combo"][2] for r in zero] == [1, 3]
    assert all(r["policy"] <= TOL for r in zero), zero


def test_masked_episodes_give_the_one_big_batch_gradient_of_the_policy_tokens(sharded_results):
    episodes = [r for r in sharded_results if r["combo"][1] == "episodes"]
    assert len(episodes) == len(ALGOS) * len(AGGS) + 2
    bad = [(r["combo"], r["policy"], r.get("critic")) for r in episodes
           if r["policy"] > TOL or r.get("critic", 0.0) > TOL]
    assert not bad, bad
    matters = next(r for r in sharded_results if r["combo"][1] == "mask_matters")
    assert matters["policy"] > 0.01  # trained on, the observation tokens would change the gradient
