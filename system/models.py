"""Build or load the policy, reference, critic and tokenizer.

No hub is needed: with `model.path` empty a tiny Llama is built from config with seeded random weights and a byte-level
tokenizer (every UTF-8 byte is a token; it is a `tokenizer.json`, so transformers and vLLM both load it).
Real model paths and hub names work the same way for users who have them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers.utils

from alignray.config import ModelConfig
from alignray.errors import ConfigError
from alignray.preflight import check_model_source

# transformers imports scikit-learn (≈1.5 s of CPU in every process that builds a model) only for assisted
# generation's candidate filtering, which alignray never uses: report it absent to transformers alone.
transformers.utils.is_sklearn_available = lambda: False

from transformers import (  # noqa: E402 - after the scikit-learn switch above
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: ids 0-2 are <pad>, <s>, </s>; ids 3..258 are the 256 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerFast:
    source = cfg.tokenizer or cfg.path
    if not source:
        return build_byte_tokenizer()
    check_model_source("model.tokenizer" if cfg.tokenizer else "model.path", source)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:  # a folder without tokenizer files, an unknown tokenizer class
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{'model.tokenizer' if cfg.tokenizer else 'model.path'}: cannot load a tokenizer from "
                          f"{source}: {first}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(cfg: ModelConfig, vocab_size: int) -> LlamaConfig:
    t = cfg.tiny
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_attention_heads, max_position_embeddings=t.max_position_embeddings,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype=cfg.dtype,
    )


def load_policy(cfg: ModelConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """The causal LM that is trained (also the frozen reference: call it twice, both start from the same weights)."""
    dtype = DTYPES[cfg.dtype]
    if cfg.path:
        return AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(tiny_config(cfg, vocab_size or len(build_byte_tokenizer())))
    return model.to(dtype)


def load_critic(cfg: ModelConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """A per-token value model (PPO): the policy's trunk with a one-output token-classification head."""
    dtype = DTYPES[cfg.dtype]
    if cfg.path:
        return AutoModelForTokenClassification.from_pretrained(  # no dropout: V_old and V must be one function
            cfg.path, num_labels=1, dtype=dtype, trust_remote_code=cfg.trust_remote_code, classifier_dropout=0.0)
    config = tiny_config(cfg, vocab_size or len(build_byte_tokenizer()))
    config.num_labels = 1
    config.classifier_dropout = 0.0  # transformers' token-classification head defaults to dropout 0.1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        model = AutoModelForTokenClassification.from_config(config)
    return model.to(dtype)


def save_hf(model: PreTrainedModel, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write a `from_pretrained`-loadable folder (weights as safetensors plus the tokenizer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def materialise_tiny(cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Save the tiny random policy and its tokenizer as an HF folder (what vLLM and `model.path` users load)."""
    tok = load_tokenizer(cfg)
    return save_hf(load_policy(cfg, len(tok)), tok, out_dir)
