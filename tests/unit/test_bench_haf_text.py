"""haf-text's data: the shifted test split shares no sentence template with the training split; labels as
asked."""

from __future__ import annotations

import re

import numpy as np
from rm_bench import BENCHMARKS
from rm_bench.haf_text import SPLITS, make_data

from alignray.rm import text_grammar as g


def _templates_used(texts: list[str], templates: list[str]) -> set[int]:
    patterns = [re.compile(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(t))) for t in templates]
    return {i for text in texts for i, p in enumerate(patterns) if p.search(text)}


def test_shifted_split_uses_only_unseen_templates_and_clean_labels():
    train, shifted = make_data(60, 0, "train", noise=0.0), make_data(60, 1, "shifted", noise=0.0)
    train_texts, shifted_texts = train.chosen + train.rejected, shifted.chosen + shifted.rejected
    assert _templates_used(train_texts, g.GOOD) == set(SPLITS["train"][0])  # the patterns do match
    assert _templates_used(train_texts, g.BAD) <= set(SPLITS["train"][1])
    assert _templates_used(shifted_texts, g.GOOD) == set(SPLITS["shifted"][0])
    assert _templates_used(shifted_texts, g.BAD) <= set(SPLITS["shifted"][1])
    for data in (train, shifted):
        assert (data.attributes["quality"][:, 0] > data.attributes["quality"][:, 1]).all()
    noisy = make_data(400, 0, "train", noise=0.25)
    flipped = float(np.mean(noisy.attributes["quality"][:, 0] < noisy.attributes["quality"][:, 1]))
    assert 0.18 < flipped < 0.32
    assert "haf-text" in BENCHMARKS
