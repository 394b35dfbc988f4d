"""Maximum mean discrepancy (MMD) penalty of the causal reward model (arXiv 2501.09620).

The causal RM asks r ⟂ Z for a spurious attribute Z (length, a sycophantic prefix, a demographic attribute).
It bins responses by Z and penalises Σ_{m<m'} MMD²(P_m, P_m'), where P_m is the distribution of the reward (or
of the pooled representation) of the responses in bin m.

Choices this module makes (the paper leaves them open):
- Estimator: the biased V-statistic MMD²_b = mean K_xx + mean K_yy - 2 mean K_xy. It is the squared RKHS
  distance of two empirical mean embeddings, so it is always >= 0 and exactly 0 for identical samples, and it
  is defined for bins of any size; the unbiased U-statistic can go negative on small minibatch bins.
- Kernel: Gaussian k(a, b) = exp(-||a - b||² / (2σ²)). Bandwidth rule "median": σ = median pairwise distance
  of the pooled batch (Gretton et al. 2012), computed without gradient; "multi": a sum of kernels with σ·{1/4,
  1/2, 1, 2, 4} around the median, robust when the scale of the reward drifts during training; a float fixes
  σ.
- Bins with fewer than `min_bin_size` (default 2) samples in the batch are skipped; bin id -1 means "no bin".
- Bin edges come from the whole training set (`fit_bins`), not the minibatch, so a bin means the same thing in
  every step.
- Strata (`stratified_bins`): a bin id carries its stratum as `stratum * STRATUM_STRIDE + bin`, and only bins
  of one stratum are compared (r ⟂ Z | stratum). Ids below the stride are one stratum: the paper's penalty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

MULTI_BANDWIDTH_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
STRATUM_STRIDE = 1_000_000  # bin ids of stratum s are s * STRATUM_STRIDE + 0..num_bins-1
BandwidthRule = Literal["median", "multi"] | float


def _as_2d(values: torch.Tensor) -> torch.Tensor:
    return values.unsqueeze(-1) if values.dim() == 1 else values


def median_bandwidth(values: torch.Tensor) -> torch.Tensor:
    """σ = median of the pairwise Euclidean distances (i < j) of the pooled sample, detached; 1.0 if that is
    0."""
    x = _as_2d(values).detach().float()
    n = x.shape[0]
    if n < 2:
        return torch.tensor(1.0, device=x.device)
    distances = torch.cdist(x, x)
    upper = distances[torch.triu_indices(n, n, offset=1, device=x.device).unbind(0)]
    sigma = upper.median()
    return sigma if sigma > 0 else torch.tensor(1.0, device=x.device)


def bandwidths_for(values: torch.Tensor, rule: BandwidthRule = "median") -> torch.Tensor:
    """The list of σ the Gaussian kernel sums over, per the rule documented in the module docstring."""
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        if rule <= 0:
            raise ValueError(f"kernel bandwidth must be > 0, got {rule}")
        return torch.tensor([float(rule)], device=values.device)
    sigma = median_bandwidth(values)
    if rule == "median":
        return sigma.reshape(1)
    if rule == "multi":
        return sigma * torch.tensor(MULTI_BANDWIDTH_FACTORS, device=values.device)
    raise ValueError(f"unknown bandwidth rule {rule!r}: use 'median', 'multi' or a positive float")


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidths: torch.Tensor) -> torch.Tensor:
    """K_ij = Σ_σ exp(-||a_i - b_j||² / (2σ²)); a [n, d] or [n], b [m, d] or [m] → [n, m]."""
    sq_dist = torch.cdist(_as_2d(a).float(), _as_2d(b).float()).pow(2)
    return sum(torch.exp(-sq_dist / (2.0 * s * s)) for s in bandwidths)


def causal_penalty(
    values: torch.Tensor,
    bins: torch.Tensor,
    bandwidth: BandwidthRule = "median",
    min_bin_size: int = 2,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Σ_{m<m'} MMD²_b(P_m, P_m') over the bins present in the batch with >= min_bin_size samples, m and m' of
    the same stratum (module docstring).

    values [n] (scalar rewards) or [n, d] (pooled representations); bins [n] integer bin ids, -1 = ignore. One
    kernel matrix K over the batch; with A = Bᵀ K B for the count-normalised bin indicator B [n, M], MMD²(m,
    m') = A_mm + A_m'm' - 2 A_mm'. "sum" follows the paper; "mean" divides by the number of pairs so λ does
    not scale with the number of bins. Returns a 0-d tensor that is 0 (still attached to the graph) when fewer
    than two bins qualify.
    """
    if values.shape[0] != bins.shape[0]:
        raise ValueError(f"values has {values.shape[0]} rows but bins has {bins.shape[0]}")
    bins = bins.to(values.device).long()
    present, counts = torch.unique(bins[bins >= 0], return_counts=True)
    kept = present[counts >= min_bin_size]
    if kept.numel() < 2:
        return values.sum() * 0.0
    in_kept = torch.isin(bins, kept)
    x = values[in_kept]
    indicator = (bins[in_kept].unsqueeze(1) == kept.unsqueeze(0)).float()
    indicator = indicator / indicator.sum(0, keepdim=True)
    kernel = gaussian_kernel(x, x, bandwidths_for(x, bandwidth))
    bin_means = indicator.T @ kernel @ indicator
    diag = bin_means.diagonal()
    pair_mmd = diag.unsqueeze(0) + diag.unsqueeze(1) - 2.0 * bin_means
    rows, cols = torch.triu_indices(kept.numel(), kept.numel(), offset=1, device=values.device).unbind(0)
    stratum = torch.div(kept, STRATUM_STRIDE, rounding_mode="floor")
    same = stratum[rows] == stratum[cols]
    if not bool(same.any()):
        return values.sum() * 0.0
    pairs = pair_mmd[rows[same], cols[same]]
    return pairs.sum() if reduction == "sum" else pairs.mean()


def conditional_causal_penalty(
    chosen_values: torch.Tensor,
    chosen_bins: torch.Tensor,
    rejected_values: torch.Tensor,
    rejected_bins: torch.Tensor,
    bandwidth: BandwidthRule = "median",
    min_bin_size: int = 2,
    reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Conditional CRM: penalty within the chosen responses + penalty within the rejected responses.

    Conditioning on the preference label asks r ⟂ Z | label, which the paper finds removes more bias than the
    unconditional r ⟂ Z (computed by `causal_penalty` on chosen and rejected pooled).
    """
    kwargs = {"bandwidth": bandwidth, "min_bin_size": min_bin_size, "reduction": reduction}
    return causal_penalty(chosen_values, chosen_bins, **kwargs) + causal_penalty(
        rejected_values, rejected_bins, **kwargs
    )


BinRule = Literal["quantile", "equal_width", "categorical"]


@dataclass
class BinSpec:
    """Bins of a spurious attribute, fitted on the training set: numeric edges or a list of category
    tuples."""

    rule: BinRule
    edges: list[float] = field(default_factory=list)
    categories: list[tuple] = field(default_factory=list)

    @property
    def num_bins(self) -> int:
        return len(self.categories) if self.rule == "categorical" else len(self.edges) + 1

    def assign(self, z: np.ndarray) -> np.ndarray:
        """Bin id of every sample: z [n] numeric → 0..len(edges); z [n] or [n, a] categorical → index, -1 if
        unseen."""
        z = np.asarray(z)
        if self.rule != "categorical":
            return np.searchsorted(np.asarray(self.edges, dtype=float), z.astype(float), side="right")
        lookup = {cat: i for i, cat in enumerate(self.categories)}
        return np.array([lookup.get(_category_key(row), -1) for row in z], dtype=np.int64)


def stratified_bins(z: np.ndarray, strata: np.ndarray | None, rule: BinRule = "quantile",
                    num_bins: int = 10) -> np.ndarray:
    """Bin ids of z [n] (or [n, a] categorical): without strata, `fit_bins(z).assign(z)`; with strata [n] (any
    hashable values), bins fitted inside each stratum (its own quantiles) and offset by the stratum's index ×
    STRATUM_STRIDE, so `causal_penalty` compares bins only within a stratum."""
    z = np.asarray(z)
    if strata is None:
        return fit_bins(z, rule, num_bins).assign(z)
    strata = np.asarray(strata)
    if strata.shape[0] != z.shape[0]:
        raise ValueError(f"strata has {strata.shape[0]} values but the attribute {z.shape[0]}")
    ids = np.empty(z.shape[0], dtype=np.int64)
    keys = [_category_key(s) for s in strata]
    for index, value in enumerate(sorted(set(keys), key=lambda t: tuple(map(str, t)))):
        rows = np.array([key == value for key in keys])
        local = fit_bins(z[rows], rule, num_bins).assign(z[rows])
        ids[rows] = np.where(local >= 0, local + index * STRATUM_STRIDE, -1)
    return ids


def _category_key(row) -> tuple:
    values = row.tolist() if isinstance(row, np.ndarray) else row
    return tuple(values) if isinstance(values, list | tuple) else (values,)


def fit_bins(z: np.ndarray, rule: BinRule = "quantile", num_bins: int = 10) -> BinSpec:
    """Fit bins on training values of Z.

    quantile: interior edges at the 1/M, ..., (M-1)/M quantiles (duplicates merged, so ties give fewer bins) —
      equal-count bins, so every bin has samples in a batch.  equal_width: M equal intervals of [min, max].
    categorical: one bin per distinct value, or per distinct row of z [n, a] (a multi-attribute combination,
    e.g.
      4 age × 3 gender × 5 race = up to 60 bins).
    """
    z = np.asarray(z)
    if z.shape[0] == 0:
        raise ValueError("cannot fit bins on an empty attribute")
    if rule == "categorical":
        categories = sorted({_category_key(row) for row in z}, key=lambda t: tuple(map(str, t)))
        return BinSpec(rule="categorical", categories=categories)
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    values = z.astype(float)
    if values.ndim != 1:
        raise ValueError(f"{rule} bins need a 1-D numeric attribute, got shape {values.shape}")
    if rule == "quantile":
        edges = np.unique(np.quantile(values, np.arange(1, num_bins) / num_bins))
    elif rule == "equal_width":
        edges = np.linspace(values.min(), values.max(), num_bins + 1)[1:-1]
        edges = np.unique(edges)
    else:
        raise ValueError(f"unknown bin rule {rule!r}: use 'quantile', 'equal_width' or 'categorical'")
    return BinSpec(rule=rule, edges=[float(e) for e in edges])
