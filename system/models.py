"""Build or load the policy, reference, critic and tokenizer.

No hub is needed: with `model.path` empty a tiny Llama is built from config with seeded random weights and a
byte-level tokenizer (every UTF-8 byte is a token; it is a `tokenizer.json`, so transformers and vLLM both
load it). Real model paths and hub names work the same way for users who have them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    LlamaConfig,
    PreTrainedModel,
)

from alignray.config_sections import ModelConfig
from alignray.errors import AlignrayError
from alignray.tokenizer import build_byte_tokenizer, load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_config(cfg: ModelConfig, vocab_size: int) -> LlamaConfig:
    t = cfg.tiny
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_attention_heads, max_position_embeddings=t.max_position_embeddings,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype=cfg.dtype,
    )


def load_policy(cfg: ModelConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """The causal LM that is trained (also the frozen reference: call it twice, both start from the same
    weights)."""
    dtype, attn = DTYPES[cfg.dtype], {"attn_implementation": cfg.attn_implementation}
    with _attention_errors(cfg):
        if cfg.path:
            return AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype,
                                                        trust_remote_code=cfg.trust_remote_code, **attn)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(
                tiny_config(cfg, vocab_size or len(build_byte_tokenizer())), **attn)
    return model.to(dtype)


def load_critic(cfg: ModelConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """A per-token value model (PPO): the policy's trunk with a one-output token-classification head."""
    dtype, attn = DTYPES[cfg.dtype], {"attn_implementation": cfg.attn_implementation}
    with _attention_errors(cfg):
        if cfg.path:
            # no dropout: V_old and V must be one function
            return AutoModelForTokenClassification.from_pretrained(
                cfg.path, num_labels=1, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                classifier_dropout=0.0, **attn)
        config = tiny_config(cfg, vocab_size or len(build_byte_tokenizer()))
        config.num_labels = 1
        config.classifier_dropout = 0.0  # transformers' token-classification head defaults to dropout 0.1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            model = AutoModelForTokenClassification.from_config(config, **attn)
    return model.to(dtype)


@contextmanager
def _attention_errors(cfg: ModelConfig) -> Iterator[None]:
    """transformers refusing the attention implementation (flash-attn not installed, a model without SDPA)
    becomes one line naming `model.attn_implementation`."""
    try:
        yield
    except (ImportError, ValueError) as e:
        text = str(e).strip()
        if "attention" not in text.lower() and "attn" not in text.lower():
            raise
        raise AlignrayError(f"model.attn_implementation={cfg.attn_implementation}: {text.splitlines()[0]} "
                            "(try sdpa or eager)") from None


def optimizer_for(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameters that train: all of them, or with `model.lora` the adapters only (the frozen
    base has no optimizer state)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                             weight_decay=weight_decay)


def save_hf(model: PreTrainedModel, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write a `from_pretrained`-loadable folder (weights as safetensors plus the tokenizer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def materialise_tiny(cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Save the tiny random policy and its tokenizer as an HF folder (what vLLM and `model.path` users
    load)."""
    tok = load_tokenizer(cfg)
    return save_hf(load_policy(cfg, len(tok)), tok, out_dir)
