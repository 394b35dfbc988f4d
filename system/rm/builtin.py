"""The built-in example's preference data, `builtin:NAME`: an embedded set generated, seeded, from the
restaurant-advice sentence grammar (text_grammar.py): real English answers whose hidden quality decides the
label, and a spurious attribute, `concept` (a price or ambience remark, neutral to quality), on 80 % of the
better and 20 % of the worse responses in training and on half of all responses, independent of quality, in
the test set. Every chosen response carries its exact counterfactual (the remark removed or inserted). The
concept-text benchmark (benchmarks/rm_bench) draws its data from the same generator, with label noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import alignray.rm.text_grammar as g
from alignray.errors import ConfigError
from alignray.rm.pairs import PreferenceData

ATTR = "concept"
BUILTIN = {"restaurants": (800, 0, True), "restaurants-test": (400, 1, False)}
"""name → (pairs, seed, training split: the attribute follows quality)."""


def make_pairs(n: int, seed: int, concept: str, train: bool) -> list[dict[str, Any]]:
    """n pairs {prompt, better, worse, cf_better, cf_worse} (Responses + counterfactual values),
    noise-free."""
    rng = np.random.default_rng(seed)
    values = g.CONCEPTS[concept]
    pairs = []
    while len(pairs) < n:
        qa, qb = rng.integers(0, 5, size=2)
        if qa == qb:
            continue
        text, city = g.prompt(rng)
        rates = (0.8, 0.2) if train else (0.5, 0.5)
        resp = [g.response(rng, city, int(q), concept, values[rng.integers(len(values))] if rng.uniform() < p
                           else g.NONE) for q, p in zip(sorted((qa, qb), reverse=True), rates, strict=True)]
        pairs.append({"prompt": text, "better": resp[0], "worse": resp[1],
                      "cf": [g.counterfactual_value(r, concept, rng) for r in resp]})
    return pairs


def to_data(pairs: list[dict[str, Any]], noise: float, seed: int, name: str) -> PreferenceData:
    """Flip a share `noise` of the labels (seeded) and lay the pairs out as PreferenceData."""
    flips = np.random.default_rng(seed + 31337).uniform(size=len(pairs)) < noise
    prompts, chosen, rejected, attr, quality, cf = [], [], [], [], [], []
    for pair, flip in zip(pairs, flips, strict=True):
        (c, c_cf), (r, _) = ((pair["worse"], pair["cf"][1]), (pair["better"], None)) if flip else \
            ((pair["better"], pair["cf"][0]), (pair["worse"], None))
        prompts.append(pair["prompt"])
        chosen.append(c.render())
        rejected.append(r.render())
        attr.append([c.value, r.value])
        quality.append([c.quality, r.quality])
        cf.append(c.render(c_cf))
    values = np.array(attr)
    return PreferenceData(prompts, chosen, rejected,
                          {ATTR: values, "present": values != g.NONE, "quality": np.array(quality)},
                          counterfactuals={ATTR: cf}, source=name)


def builtin_name(source: str) -> str:
    name = source.removeprefix("builtin:")
    if name not in BUILTIN:
        raise ConfigError(f"{source}: no such built-in preference set; available: "
                          f"{', '.join('builtin:' + n for n in BUILTIN)}")
    return name


def builtin_preferences(source: str) -> PreferenceData:
    """The embedded set `builtin:NAME` (same pairs on every call and machine)."""
    n, seed, train = BUILTIN[builtin_name(source)]
    data = to_data(make_pairs(n, seed, "concept", train), 0.0, seed, source)
    data.attributes.pop("quality")  # the hidden truth: the labels already follow it
    return data
