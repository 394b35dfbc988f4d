"""The policy's tokenizer: a byte-level tokenizer built here (no hub), or one loaded from
`model.tokenizer`/`model.path`.

Torch-free on purpose: the driver tokenizes and validates the prompts before any actor starts, and importing
torch (or transformers' Auto classes, which import it) there would cost every run seconds of start-up on the
critical path.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.tokenization_utils_fast import PreTrainedTokenizerFast

from alignray.config_sections import ModelConfig
from alignray.driver.preflight import check_model_source
from alignray.errors import ConfigError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: ids 0-2 are <pad>, <s>, </s>; ids 3..258 are the 256
    bytes."""
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
    field = "model.tokenizer" if cfg.tokenizer else "model.path"
    check_model_source(field, source)
    try:
        if _generic_fast_tokenizer(source):  # what AutoTokenizer would build, without importing torch
            tok = PreTrainedTokenizerFast.from_pretrained(source)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:  # a folder without tokenizer files, an unknown tokenizer class
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"{field}: cannot load a tokenizer from {source}: {first}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _generic_fast_tokenizer(source: str) -> bool:
    """A local folder whose tokenizer_config.json names the generic PreTrainedTokenizerFast (as
    `save_pretrained` of the byte tokenizer writes): AutoTokenizer resolves it to that very class, so it is
    loaded directly."""
    folder = Path(source)
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return ((folder / "tokenizer.json").is_file()
            and config.get("tokenizer_class") == "PreTrainedTokenizerFast" and "auto_map" not in config)
