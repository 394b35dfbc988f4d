"""PreferenceData: column-oriented preference pairs, the one in-memory form every loader and generator
returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PreferenceData:
    """Column-oriented preference pairs. attributes[name] and ratings[rule] are arrays [n, 2]: (chosen,
    rejected)."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    ratings: dict[str, np.ndarray] = field(default_factory=dict)
    counterfactuals: dict[str, list[str | None]] = field(default_factory=dict)
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def rule_names(self) -> list[str]:
        return list(self.ratings)

    def rating_matrix(self, side: int) -> np.ndarray:
        """[n, K] ratings of the chosen (side 0) or rejected (side 1) responses, in rule_names order."""
        return np.stack([self.ratings[r][:, side] for r in self.rule_names], axis=1)

    def subset(self, index: Sequence[int] | np.ndarray) -> PreferenceData:
        index = np.asarray(index, dtype=int)
        return PreferenceData(
            [self.prompts[i] for i in index], [self.chosen[i] for i in index],
            [self.rejected[i] for i in index],
            {k: v[index] for k, v in self.attributes.items()}, {k: v[index] for k, v in self.ratings.items()},
            {k: [v[i] for i in index] for k, v in self.counterfactuals.items()}, self.source)
