"""The training loop, in process or on one DeepSpeed rank: `train_reward_model(cfg, data)` builds the model
cfg.kind describes and fits it; `reward_loss(model, batch, cfg)` is the per-batch loss; `Distributed` says
which slice of each global batch this rank takes and how its steps are reported."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from alignray.rewards.encoding import encode_pairs
from alignray.rewards.encore import Discretisation, fit_encore
from alignray.rewards.ensemble_models import EnsembleRewardModel, warm_model
from alignray.rewards.haf_model import HafRewardModel
from alignray.rewards.heads_model import HeadsRewardModel
from alignray.rewards.losses import bradley_terry_loss, haf_loss
from alignray.rewards.models import RewardModel, ScalarRewardModel
from alignray.rm.auto_lambda import collapsed
from alignray.rm.backbones import build_word_tokenizer, load_tokenizer, new_backbone
from alignray.rm.causal import resolve_causal
from alignray.rm.config import RewardTrainConfig
from alignray.rm.mmd import stratified_bins
from alignray.rm.objectives import preference_objective
from alignray.rm.preference_data import COMPUTED_ATTRIBUTES, PreferenceData, compute_attribute
from alignray.rm.sources import resolve_base_model


def make_tokenizer(cfg: RewardTrainConfig, data: PreferenceData):
    if cfg.base_model is not None:
        return load_tokenizer(resolve_base_model(cfg.base_model), cfg.trust_remote_code)
    if cfg.tiny_model.tokenizer is not None:
        return load_tokenizer(cfg.tiny_model.tokenizer, cfg.trust_remote_code)
    return build_word_tokenizer(data.prompts + data.chosen + data.rejected)


def build_reward_model(cfg: RewardTrainConfig, tokenizer, head_names: list[str] | None = None) -> RewardModel:
    """An untrained model for cfg.kind (an "independent"/"lora"/"warm" ensemble member is a scalar model)."""
    base = resolve_base_model(cfg.base_model) if cfg.base_model is not None else None
    args = (base, cfg.tiny_model, tokenizer, cfg.trust_remote_code)
    pooling = None if cfg.pooling == "auto" else cfg.pooling
    if cfg.kind == "haf":
        policy = new_backbone("causal_lm", *args)
        if cfg.lora_r:
            policy = _with_lora(policy, cfg, task_type="CAUSAL_LM")
        return HafRewardModel(policy, tokenizer, cfg.max_length)
    if cfg.kind == "multihead" or (cfg.kind == "ensemble" and cfg.ensemble_type == "linear_heads"):
        role = "multihead" if cfg.kind == "multihead" else "ensemble"
        names = head_names if role == "multihead" else [str(i) for i in range(cfg.ensemble_size)]
        return HeadsRewardModel(new_backbone("base", *args), tokenizer, names, role, cfg.max_length, pooling,
                                aggregation=cfg.aggregation, coef=cfg.aggregation_coef,
                                ddof=cfg.aggregation_ddof)
    backbone = new_backbone("sequence_classification", *args)
    if cfg.lora_r:
        backbone = _with_lora(backbone, cfg, task_type="SEQ_CLS")
    return ScalarRewardModel(backbone, tokenizer, cfg.max_length, cfg.kind, pooling)


def _with_lora(model, cfg: RewardTrainConfig, task_type: str):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                            target_modules=cfg.lora_targets, task_type=task_type))


def freeze_lower_layers(model: nn.Module, train_layers: int | None) -> None:
    """Freeze the embeddings and all but the last `train_layers` transformer blocks (heads stay trainable)."""
    if train_layers is None:
        return
    blocks = max((m for m in model.modules() if isinstance(m, nn.ModuleList)), key=len, default=None)
    frozen = list(blocks[: len(blocks) - train_layers]) if blocks is not None else []
    frozen += [m for name, m in model.named_modules() if name.endswith(("embeddings", "embed_tokens"))]
    for module in frozen:
        module.requires_grad_(False)


def attribute_bins(cfg: RewardTrainConfig, data: PreferenceData, tokenizer) -> np.ndarray:
    """Bin ids [n, 2] (chosen, rejected) of cfg.mmd_attribute, bins fitted on all training responses (within
    each stratum of cfg.mmd_strata, if set: mmd.stratified_bins)."""
    names = [cfg.mmd_attribute] if isinstance(cfg.mmd_attribute, str) else list(cfg.mmd_attribute)
    columns = []
    for name in names:
        if name in data.attributes:
            columns.append(data.attributes[name])
        elif name in COMPUTED_ATTRIBUTES:
            columns.append(np.stack([compute_attribute(name, data.chosen, tokenizer),
                                     compute_attribute(name, data.rejected, tokenizer)], axis=1))
        else:
            raise ValueError(f"mmd_attribute '{name}' is not in the data ({sorted(data.attributes)}) and not "
                             f"one of the computed attributes {COMPUTED_ATTRIBUTES}")
    flat = np.concatenate([c.reshape(-1, 1) for c in columns],
                          axis=1) if len(names) > 1 else columns[0].reshape(-1)
    if len(names) > 1 and cfg.mmd_bins != "categorical":
        raise ValueError("several mmd_attribute names form combinations: use mmd_bins='categorical'")
    strata = None
    if cfg.mmd_strata is not None:
        if cfg.mmd_strata not in data.attributes:
            raise ValueError(f"mmd_strata '{cfg.mmd_strata}' is not in the data: it needs the columns "
                             f"chosen_{cfg.mmd_strata} and rejected_{cfg.mmd_strata} "
                             f"(found {sorted(data.attributes)})")
        strata = data.attributes[cfg.mmd_strata].reshape(-1)
    return stratified_bins(flat, strata, cfg.mmd_bins, cfg.mmd_num_bins).reshape(len(data), 2)


def collate(tokenizer, data: PreferenceData, index: np.ndarray, max_length: int,
            bins: np.ndarray | None = None, swap: np.ndarray | None = None,
            cf_attribute: str | None = None) -> dict[str, torch.Tensor]:
    """2B sequences: rows [0, B) are the chosen responses, rows [B, 2B) the rejected ones, padded together.
    swap [n]: pairs the quality estimate orders the other way; cf_attribute: add the chosen rows'
    counterfactuals (cf_input_ids / cf_attention_mask, and cf_rows = their positions in the batch)."""
    prompts = [data.prompts[i] for i in index]
    batch = encode_pairs(tokenizer, prompts + prompts, [data.chosen[i] for i in index] +
                         [data.rejected[i] for i in index], max_length)
    if bins is not None:
        batch["bins"] = torch.from_numpy(np.concatenate([bins[index, 0], bins[index, 1]])).long()
    if swap is not None:
        batch["swap"] = torch.from_numpy(swap[index]).bool()
    texts = data.counterfactuals.get(cf_attribute) if cf_attribute else None
    rows = [j for j, i in enumerate(index) if texts is not None and texts[i] is not None]
    if rows:
        cf = encode_pairs(tokenizer, [prompts[j] for j in rows], [texts[index[j]] for j in rows], max_length)
        batch.update(cf_input_ids=cf["input_ids"], cf_attention_mask=cf["attention_mask"],
                     cf_rows=torch.tensor(rows, dtype=torch.long))
    if data.ratings:
        batch["ratings"] = torch.from_numpy(np.concatenate([data.rating_matrix(0)[index],
                                                            data.rating_matrix(1)[index]])).float()
    return batch


def reward_loss(model: nn.Module, batch: dict[str, torch.Tensor], cfg: RewardTrainConfig
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch from `collate` (chosen rows first, then rejected rows). `model` may be a DeepSpeed
    engine wrapping a RewardModel: only model(...) is called. Returns (loss, stats of floats)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    half = ids.shape[0] // 2
    if cfg.kind == "haf":
        out = model(ids, mask, batch["response_mask"])
        ref = model(ids, mask, batch["response_mask"], reference=True)["ref_logp"]
        r, logp = out["reward"], out["logp"]
        loss, stats = haf_loss(r[:half], r[half:], logp[:half], logp[half:], ref[:half], ref[half:],
                               cfg.haf_alpha, cfg.dpo_beta, cfg.haf_bt_weight)
    elif cfg.kind == "multihead":
        out = model(ids, mask)
        r = out["reward"]
        loss = nn.functional.mse_loss(out["heads"], batch["ratings"].to(out["heads"].dtype))
        stats = {"mse": float(loss.detach())}
    else:
        want_rep = cfg.kind == "causal" and cfg.mmd_on == "representation"
        out = model(ids, mask, return_representation=True) if want_rep else model(ids, mask)
        r = out["reward"]
        if "heads" in out:  # linear-head ensemble: every head is a BT model of its own
            heads = out["heads"]
            loss = torch.stack([bradley_terry_loss(h[:half], h[half:], cfg.margin) for h in heads.T]).mean()
            stats = {"bt_loss": float(loss.detach())}
        elif cfg.kind == "causal":
            if isinstance(cfg.mmd_lambda, str):
                raise ValueError("mmd_lambda 'auto' must be resolved first (train_reward_model does)")
            cf_weight = ((1.0 if "cf_input_ids" in batch else 0.0) if cfg.cf_weight == "auto"
                         else cfg.cf_weight)
            r_cf = None
            if cf_weight > 0 and "cf_input_ids" in batch:
                r_cf = model(batch["cf_input_ids"], batch["cf_attention_mask"])["reward"]
            return preference_objective(
                r, margin=cfg.margin, mmd_lambda=cfg.mmd_lambda,
                mmd_values=out["representation"] if want_rep else r,
                bins=batch.get("bins"), mmd_mode=cfg.mmd_mode, swap=batch.get("swap"),
                bandwidth=cfg.mmd_bandwidth,
                min_bin_size=cfg.mmd_min_bin_size, reduction=cfg.mmd_reduction, cf_weight=cf_weight,
                cf_rows=batch.get("cf_rows"), r_cf=r_cf)
        else:
            loss = bradley_terry_loss(r[:half], r[half:], cfg.margin)
            stats = {"bt_loss": float(loss.detach())}
    stats["loss"] = float(loss.detach())
    stats["accuracy"] = float((r[:half] > r[half:]).float().mean())
    return loss, stats


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run: each global batch of `batch_size × world` pairs is split
    so rank r takes its own `batch_size` slice (every rank runs the same number of steps). `wrap(model,
    optimizer)` returns a DeepSpeed engine (it all-reduces gradients, clips and steps). `on_step(report)`
    after every optimizer step of every fit: {fit, step, total, loss, accuracy} (`fit` names the model and the
    pairs it fits)."""

    rank: int = 0
    world: int = 1
    wrap: Callable | None = None
    on_step: Callable[[dict], None] | None = None


def fit(model: RewardModel, cfg: RewardTrainConfig, data: PreferenceData, bins: np.ndarray | None = None,
        order_seed: int | None = None, log: Callable[[str], None] | None = None,
        dist: Distributed = Distributed(), swap: np.ndarray | None = None) -> RewardModel:
    """AdamW over the trainable parameters, `cfg.epochs` shuffled passes; `order_seed` sets the data order."""
    cf_attr = None
    if cfg.kind == "causal" and not isinstance(cfg.cf_weight, str) and cfg.cf_weight > 0:
        cf_attr = cfg.cf_attribute
    freeze_lower_layers(model, cfg.train_layers)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine = dist.wrap(model, optimizer) if dist.wrap is not None else None
    rng = np.random.default_rng(cfg.seed if order_seed is None else order_seed)
    model.train()
    step, stride = 0, cfg.batch_size * dist.world
    # single process: every batch of >= 2 pairs; distributed: only whole global batches, so ranks step
    # together
    stop = len(data) - 1 if dist.world == 1 else max(len(data) - stride + 1, 1)
    total = cfg.epochs * len(range(0, stop, stride))
    name = cfg.kind + (f" λ={cfg.mmd_lambda:g}" if cfg.kind == "causal" else "") + f", {len(data)} pairs"
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(data))
        for start in range(0, stop, stride):
            index = order[start + dist.rank * cfg.batch_size: start + (dist.rank + 1) * cfg.batch_size]
            batch = {k: v.to(model.device) for k, v in
                     collate(model.tokenizer, data, index, cfg.max_length, bins, swap, cf_attr).items()}
            loss, stats = reward_loss(engine or model, batch, cfg)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            step += 1
            if dist.on_step is not None:
                dist.on_step({"fit": name, "step": step, "total": total, "loss": stats["loss"],
                              "accuracy": stats["accuracy"]})
            if log is not None and step % 50 == 0:
                log(f"epoch {epoch} step {step} " + " ".join(f"{k}={v:.4f}" for k, v in stats.items()))
    return model.eval()


def fit_scalar(cfg: RewardTrainConfig, data: PreferenceData, tokenizer, bins: np.ndarray | None,
               swap: np.ndarray | None, dist) -> RewardModel:
    """One seeded BT / causal fit (λ already a number) — the unit the sweep and the cross-fit repeat."""
    seed_everything(cfg.seed)
    model = build_reward_model(cfg, tokenizer)
    return fit(model, cfg, data, bins if cfg.kind == "causal" else None, dist=dist, swap=swap)


def _refit_if_collapsed(model: RewardModel, cfg: RewardTrainConfig, data: PreferenceData, sweep: dict,
                        refit: Callable[[RewardTrainConfig], RewardModel],
                        log: Callable[[str], None] | None) -> tuple[RewardModel, RewardTrainConfig]:
    """`mmd_lambda: auto`'s final fit on all pairs may collapse where the sweep's fits did not: refit at the
    next smaller λ of the grid until the reward spread is at least COLLAPSE_RATIO of the sweep's BT baseline
    (recorded in the sweep as `collapsed_final`)."""
    rows = np.arange(min(len(data), 256))
    sample = data.subset(rows)
    smaller = sorted((row for row in sweep["sweep"] if row["lambda"] < cfg.mmd_lambda),
                     key=lambda row: -row["lambda"])
    baseline = sweep["baseline_bt"].get("spread", 0.0)
    for lower in [None, *smaller]:
        if lower is not None:
            cfg = cfg.model_copy(update={"mmd_lambda": lower["lambda"]})
            model = refit(cfg)
        r = np.concatenate([model.score(sample.prompts, sample.chosen)["reward"],
                            model.score(sample.prompts, sample.rejected)["reward"]])
        if not collapsed(float(r.std()), baseline):
            return model, cfg
        sweep.setdefault("collapsed_final", []).append(cfg.mmd_lambda)
        if log is not None:
            log(f"mmd_lambda auto: the final fit at λ={cfg.mmd_lambda:g} collapsed (reward std "
                f"{r.std():.2e}, BT {baseline:.2e}); refitting at a smaller λ")
    cfg = cfg.model_copy(update={"mmd_lambda": 0.0, "kind": "bt"})  # every λ collapsed: plain BT
    return refit(cfg), cfg


def _merge_lora(model: RewardModel) -> RewardModel:
    if isinstance(model, ScalarRewardModel) and hasattr(model.backbone, "merge_and_unload"):
        model.backbone = model.backbone.merge_and_unload()
    return model


def train_reward_model(cfg: RewardTrainConfig, data: PreferenceData, tokenizer=None,
                       log: Callable[[str], None] | None = None, dist: Distributed = Distributed()
                       ) -> RewardModel:
    """Train the model cfg.kind describes on `data` and return it in eval mode (ready for `save`/`score`)."""
    if len(data) < 2:
        raise ValueError("training needs at least two preference pairs")
    tokenizer = tokenizer or make_tokenizer(cfg, data)
    if cfg.kind == "ensemble" and cfg.ensemble_type in ("independent", "lora", "warm"):
        members = []
        for i in range(cfg.ensemble_size):
            # WARM members share one initialisation (seed) and differ in data order; others differ in both
            seed_everything(cfg.seed if cfg.ensemble_type == "warm" else cfg.seed + i)
            lora_r = (cfg.lora_r or 8) if cfg.ensemble_type == "lora" else cfg.lora_r
            member_cfg = cfg.model_copy(update={"kind": "bt", "lora_r": lora_r})
            member = build_reward_model(member_cfg, tokenizer)
            members.append(_merge_lora(fit(member, member_cfg, data, order_seed=cfg.seed + i, log=log,
                                           dist=dist)))
        if cfg.ensemble_type == "warm":
            return warm_model(members)
        return EnsembleRewardModel(members, cfg.aggregation, cfg.aggregation_coef, cfg.aggregation_ddof)
    if cfg.kind == "multihead" and not data.ratings:
        raise ValueError(f"{data.source}: kind 'multihead' needs chosen_ratings/rejected_ratings in the data")
    bins = attribute_bins(cfg, data, tokenizer) if cfg.kind == "causal" else None
    swap, sweep = None, None
    if cfg.kind == "causal":
        def fit_fn(c, d, b, s):
            return fit_scalar(c, d, tokenizer, b, s, dist)

        cfg, swap, sweep = resolve_causal(cfg, data, bins, fit_fn, log)
    seed_everything(cfg.seed)
    model = build_reward_model(cfg, tokenizer, data.rule_names)
    model = _merge_lora(fit(model, cfg, data, bins, log=log, dist=dist, swap=swap))
    if sweep is not None:
        def refit(c: RewardTrainConfig) -> RewardModel:
            return _merge_lora(fit_scalar(c, data, tokenizer, bins, swap, dist))

        model, cfg = _refit_if_collapsed(model, cfg, data, sweep, refit, log)
    if cfg.kind == "causal" and isinstance(model, ScalarRewardModel):
        model.metadata.update(mmd_lambda=cfg.mmd_lambda, cf_weight=cfg.cf_weight,
                              mmd_condition=cfg.mmd_condition, mmd_mode=cfg.mmd_mode,
                              mmd_strata=cfg.mmd_strata, mmd_auto=sweep)
    if isinstance(model, HeadsRewardModel) and model.role == "multihead":
        ratings = np.concatenate([data.rating_matrix(0), data.rating_matrix(1)])
        disc = Discretisation(cfg.encore_levels, cfg.encore_low, cfg.encore_high, cfg.encore_log_base)
        model.set_encore(fit_encore(ratings, data.rule_names, cfg.encore_tau, disc))
    return model

