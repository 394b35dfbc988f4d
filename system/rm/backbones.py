"""Creating trunks and tokenizers: a pretrained path (local directory, or a hub name where a hub is reachable)
or a tiny randomly initialised model built from a config, with a word-level tokenizer built from the data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]",
                  "sep_token": "[SEP]"}


class TinyModelSpec(BaseModel):
    """A small randomly initialised transformer (for tests and synthetic benchmarks where text quality does
    not matter). tokenizer: a directory to load one from; None builds a whitespace word-level tokenizer from
    the data."""

    model_config = ConfigDict(extra="forbid")
    arch: Literal["llama", "bert"] = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 512
    tokenizer: str | None = None


def build_word_tokenizer(texts: Iterable[str], max_vocab: int = 20000):
    """Whitespace word-level tokenizer over the most frequent words of `texts`, with [PAD] [UNK] [BOS] [EOS]
    [SEP]."""
    from collections import Counter

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = Counter(word for text in texts for word in text.split())
    words = list(SPECIAL_TOKENS.values()) + [w for w, _ in counts.most_common(max_vocab)]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def tiny_config(spec: TinyModelSpec, tokenizer):
    """A transformers config for the spec, sized to the tokenizer's vocabulary."""
    from transformers import BertConfig, LlamaConfig

    common = {
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec.arch == "llama":
        return LlamaConfig(num_key_value_heads=spec.num_attention_heads, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **common)
    return BertConfig(**common)


Head = Literal["sequence_classification", "base", "causal_lm"]


def new_backbone(head: Head, base_model: str | None, tiny: TinyModelSpec | None, tokenizer,
                 trust_remote_code: bool = False):
    """A trunk with the requested head: AutoModelForSequenceClassification (num_labels=1), AutoModel or
    AutoModelForCausalLM, from `base_model` (pretrained) or from `tiny` (random init; the caller seeds
    torch)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = {"sequence_classification": AutoModelForSequenceClassification, "base": AutoModel,
            "causal_lm": AutoModelForCausalLM}[head]
    extra = {"num_labels": 1} if head == "sequence_classification" else {}
    if base_model is not None:
        model = auto.from_pretrained(base_model, trust_remote_code=trust_remote_code, **extra)
    elif tiny is not None:
        config = tiny_config(tiny, tokenizer)
        for key, value in extra.items():
            setattr(config, key, value)
        model = auto.from_config(config)
    else:
        raise ValueError("set either base_model (a pretrained path) or tiny (a TinyModelSpec)")
    if getattr(model.config, "pad_token_id", None) is None:
        from alignray.rewards.encoding import pad_token_id

        model.config.pad_token_id = pad_token_id(tokenizer)
    return model
