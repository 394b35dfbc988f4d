"""ENCORE (arXiv 2503.20995): weight the heads of a multi-head reward model by the entropy of their ratings.

A rule whose ratings on the training set are spread evenly over the scale (high entropy) behaves like noise; a
rule with a peaked distribution is decisive. Weights w = softmax(-H / τ), τ = 2 by default (τ → ∞ gives
uniform weights). Final reward φ = Σ_k w_k ψ_k. The discretisation used for H is part of the saved weights so
scores are reproducible.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Discretisation:
    """Ratings are clipped to [low, high] and cut into `levels` equal-width bins; entropy is in log base
    `log_base`."""

    levels: int = 10
    low: float = 0.0
    high: float = 1.0
    log_base: float = 2.0

    def __post_init__(self):
        if self.levels < 2:
            raise ValueError(f"discretisation levels must be >= 2, got {self.levels}")
        if not self.high > self.low:
            raise ValueError(f"discretisation needs high > low, got low={self.low} high={self.high}")
        if self.log_base <= 1:
            raise ValueError(f"discretisation log_base must be > 1, got {self.log_base}")


def discretise(ratings: np.ndarray, disc: Discretisation) -> np.ndarray:
    """Level index in 0..levels-1 of every rating: floor((clip(x) - low) / (high - low) · levels), top edge
    inclusive."""
    x = np.clip(np.asarray(ratings, dtype=float), disc.low, disc.high)
    return np.minimum(((x - disc.low) / (disc.high - disc.low) * disc.levels).astype(int), disc.levels - 1)


def rating_entropy(ratings: np.ndarray, disc: Discretisation = Discretisation()) -> float:
    """Shannon entropy H = -Σ_l p_l log_b p_l of the discretised rating distribution (0 log 0 = 0)."""
    ratings = np.asarray(ratings, dtype=float).ravel()
    if ratings.size == 0:
        raise ValueError("rating_entropy needs at least one rating")
    counts = np.bincount(discretise(ratings, disc), minlength=disc.levels)
    p = counts[counts > 0] / ratings.size
    return float(-(p * np.log(p)).sum() / math.log(disc.log_base))


def encore_weights(entropies: np.ndarray, tau: float = 2.0) -> np.ndarray:
    """w_k = exp(-H_k / τ) / Σ_j exp(-H_j / τ), computed stably (shift by min H)."""
    if tau <= 0:
        raise ValueError(f"ENCORE temperature tau must be > 0, got {tau}")
    h = np.asarray(entropies, dtype=float)
    logits = -(h - h.min()) / tau
    w = np.exp(logits)
    return w / w.sum()


@dataclass
class EncoreWeights:
    """Everything needed to turn head ratings ψ [n, K] into φ: head names, entropies, weights, τ,
    discretisation."""

    head_names: list[str]
    entropies: list[float]
    weights: list[float]
    tau: float = 2.0
    discretisation: Discretisation = field(default_factory=Discretisation)
    dropped_heads: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**asdict(self), "discretisation": asdict(self.discretisation)}

    @classmethod
    def from_dict(cls, d: dict) -> EncoreWeights:
        return cls(**{**d, "discretisation": Discretisation(**d["discretisation"])})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> EncoreWeights:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_encore(
    ratings: np.ndarray,
    head_names: list[str],
    tau: float = 2.0,
    disc: Discretisation = Discretisation(),
    min_std: float = 1e-8,
) -> EncoreWeights:
    """Entropy weights from training ratings [n, K]. A head whose ratings have no variance has zero entropy
    and would take most of the weight while carrying no signal: it is dropped with a warning and gets weight
    0."""
    ratings = np.asarray(ratings, dtype=float)
    if ratings.ndim != 2 or ratings.shape[1] != len(head_names):
        raise ValueError(f"ratings must be [n, {len(head_names)}] for heads {head_names}, "
                         f"got {ratings.shape}")
    constant = [name for name, col in zip(head_names, ratings.T, strict=True) if col.std() <= min_std]
    if constant:
        warnings.warn(f"ENCORE: dropping heads with no rating variance: {constant}", stacklevel=2)
    if len(constant) == len(head_names):
        raise ValueError("ENCORE: every head has constant ratings; no weights can be computed")
    entropies = [rating_entropy(col, disc) for col in ratings.T]
    kept = [i for i, name in enumerate(head_names) if name not in constant]
    kept_weights = encore_weights(np.array([entropies[i] for i in kept]), tau)
    weights = [0.0] * len(head_names)
    for i, w in zip(kept, kept_weights, strict=True):
        weights[i] = float(w)
    return EncoreWeights(list(head_names), entropies, weights, tau, disc, constant)
