"""LoRA on the policy (`model.lora`): peft adapters are the only trained parameters.

- `apply_lora` injects the adapters (peft `get_peft_model`, seeded) and freezes the base; the learner trains
  the injected model itself (`PeftModel.base_model.model`: plain transformers forward, parameter names
  `….q_proj.base_layer.weight`, `….q_proj.lora_A.default.weight`, …), and the optimizer holds only the
  adapters.
- The reference is the same module with the adapters off (`Reference`: peft's `disable_adapter()` around
  the forward), never a second copy.
- Engines receive merged weights under the base model's names (`merged_state`: W + alpha/r · B A per target
  module, computed from a state dict, never written into the training module), in the usual buckets; the HF
  export of a checkpoint is the same merged state.

torch and peft are imported where they are used: the config module imports nothing from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignray.errors import AlignrayError

if TYPE_CHECKING:
    import torch

    from alignray.config_sections import ModelConfig

ADAPTER = "default"
"""peft's name of the one adapter."""


def apply_lora(model, cfg: ModelConfig):
    """`model` with `cfg.lora`'s adapters injected (in place) and its base frozen; returns the PeftModel
    (its `base_model.model` is `model`). The adapters' random A matrices come from a seeded generator, so
    every rank and every run builds the same ones (B starts at zero: the merged model starts as the base)."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = cfg.lora
    if lora is None:
        raise ValueError("apply_lora: model.lora is empty")
    config = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=target_modules(model, lora.target_modules), bias="none",
                            task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 2)  # the tiny policy uses seed, its critic seed + 1
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            if "target" not in str(e).lower():
                raise
            first = str(e).strip().splitlines()[0]
            raise AlignrayError(f"model.lora.target_modules={lora.target_modules}: {first}") from None


def target_modules(model, targets: str | list[str]) -> str | list[str]:
    """`model.lora.target_modules` as peft takes it: `all` → the names of every linear layer, the LM head
    included unless it is tied to the input embeddings (then merging it would change the embeddings too);
    `all-linear` and lists as given (a list naming a tied LM head is an error)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if targets == "all-linear":
        return targets
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    tied = head is not None and embeddings is not None and head.weight is embeddings.weight
    if targets == "all":
        return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear | Conv1D) and not (tied and m is head)})
    head_name = next((name for name, m in model.named_modules() if m is head), None) if tied else None
    if head_name and any(head_name == t or head_name.endswith(f".{t}") for t in targets):
        raise AlignrayError(f"model.lora.target_modules={targets}: the LM head '{head_name}' shares its "
                            "weight with the input embeddings (tie_word_embeddings); leave it out")
    return list(targets)


@dataclass(frozen=True)
class Target:
    """One adapted layer: its scaling (alpha / r) and whether its weight is stored transposed (GPT-2's
    Conv1D)."""

    scaling: float
    fan_in_fan_out: bool


def lora_targets(module) -> dict[str, Target]:
    """The adapted layers of `module` (the injected model), by module name."""
    from peft.tuners.lora import LoraLayer

    return {name: Target(float(m.scaling[ADAPTER]), bool(getattr(m, "fan_in_fan_out", False)))
            for name, m in module.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.scaling}


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def merged_state(state: Mapping[str, torch.Tensor], targets: Mapping[str, Target]) -> dict[str, torch.Tensor]:
    """The injected model's parameters `state` (its names) → the merged model's, under the base model's
    names: `X.base_layer.weight` + adapters → `X.weight` = W + scaling · B A (computed in float32, cast to
    W's dtype, as peft's merge does), `X.base_layer.bias` → `X.bias`, every other tensor as it is. New
    tensors only for the merged weights; nothing in `state` is modified."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if is_adapter(name):
            continue
        if ".base_layer." not in name:
            out[name] = tensor
            continue
        prefix, leaf = name.rsplit(".base_layer.", 1)
        if leaf == "weight":
            tensor = merge_weight(tensor, state[f"{prefix}.lora_A.{ADAPTER}.weight"],
                                  state[f"{prefix}.lora_B.{ADAPTER}.weight"], targets[prefix])
        out[f"{prefix}.{leaf}"] = tensor
    return out


def merge_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, target: Target) -> torch.Tensor:
    delta = (b.float() @ a.float()) * target.scaling
    if target.fan_in_fan_out:
        delta = delta.T
    return (weight.float() + delta).to(weight.dtype)


def adapter_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors of `state` (what an engine that applies adapters itself would need)."""
    return {name: t for name, t in state.items() if is_adapter(name)}


def param_counts(module) -> tuple[int, int]:
    """(trainable, total) parameters of `module` (ZeRO-3 partitioned parameters count whole)."""
    trainable = total = 0
    for p in module.parameters():
        n = getattr(p, "ds_numel", 0) or p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


class Reference:
    """The frozen reference of a LoRA policy: the policy's own module with the adapters off.

    Called like a model (`reference(input_ids=…, …)`): runs `module` inside peft's `disable_adapter()`, so
    the log-probs are the base model's. Holds no weights of its own. Its forwards are no-grad (the learner
    calls it under `torch.no_grad`)."""

    def __init__(self, peft_model, module):
        self.peft_model, self.module = peft_model, module

    @contextmanager
    def adapters_off(self) -> Iterator[None]:
        with self.peft_model.disable_adapter():
            yield

    def __call__(self, *args, **kwargs):
        with self.adapters_off():
            return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()
