"""HAF-RM (arXiv 2407.04185): one causal-LM trunk with its LM head (the policy) and a zero-initialised scalar
reward head read at the last non-pad token. Training mixes BT on the reward head with α·DPO on the LM head;
scoring uses the reward head only."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignray.rewards.encoding import pool
from alignray.rewards.losses import dpo_implicit_reward, summed_response_logprobs
from alignray.rewards.models import DEFAULT_MAX_LENGTH, RewardModel, save_hf, write_rm_config


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class HafRewardModel(RewardModel):
    """The DPO reference π_ref is the same network with its LoRA adapters disabled when the policy is a peft
    model, otherwise a frozen copy of the initial policy, kept outside the module tree (not trained, not
    saved, not partitioned) and moved to the input's device on use."""

    kind = "haf"

    def __init__(self, policy, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, reference=None,
                 make_reference: bool = True):
        super().__init__(tokenizer, max_length)
        self.policy = policy
        self.reward_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.reward_head.weight)
        nn.init.zeros_(self.reward_head.bias)
        if reference is None and make_reference and not _is_peft(policy):
            reference = copy.deepcopy(policy)
        if reference is not None:
            reference.requires_grad_(False).eval()
        self._reference = [reference]  # a list hides it from nn.Module registration

    @torch.no_grad()
    def reference_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           response_mask: torch.Tensor) -> torch.Tensor:
        """Σ log π_ref(response tokens) [B]."""
        reference = self._reference[0]
        if reference is not None:
            reference.to(input_ids.device)
            logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits
        elif _is_peft(self.policy):
            with self.policy.disable_adapter():
                logits = self.policy(input_ids=input_ids, attention_mask=attention_mask).logits
        else:
            raise RuntimeError("HAF-RM has no reference model: build it with make_reference=True "
                               "or a peft policy")
        return summed_response_logprobs(logits, input_ids, response_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor | None = None, reference: bool = False) -> dict[str,
                                                                                            torch.Tensor]:
        """reward [B] from the reward head; with response_mask also "logp" [B] = Σ log π(response); with
        reference=True only "ref_logp" [B] (no gradient) — one entry point so a DeepSpeed engine can call
        both."""
        if reference:
            if response_mask is None:
                raise ValueError("reference log-probs need a response_mask")
            return {"ref_logp": self.reference_logprobs(input_ids, attention_mask, response_mask)}
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        representation = pool(out.hidden_states[-1], attention_mask, "last")
        result = {"reward": self.reward_head(representation.to(self.reward_head.weight.dtype)).squeeze(-1),
                  "representation": representation}
        if response_mask is not None:
            result["logp"] = summed_response_logprobs(out.logits, input_ids, response_mask)
        return result

    @torch.no_grad()
    def implicit_reward(self, prompts: list[str], responses: list[str], beta: float = 0.1,
                        batch_size: int = 32) -> np.ndarray:
        """DPO implicit reward β (Σ log π(y|x) - Σ log π_ref(y|x)) of the LM head, for comparison with the
        reward head."""
        was_training = self.training
        self.eval()
        parts = []
        for start in range(0, len(prompts), batch_size):
            b = self.encode(list(prompts[start : start + batch_size]),
                            list(responses[start : start + batch_size]))
            logp = self(b["input_ids"], b["attention_mask"], b["response_mask"])["logp"]
            ref = self.reference_logprobs(b["input_ids"], b["attention_mask"], b["response_mask"])
            parts.append(dpo_implicit_reward(logp, ref, beta).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(parts)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        policy = copy.deepcopy(self.policy).merge_and_unload() if _is_peft(self.policy) else self.policy
        save_hf(policy, self.tokenizer, path / "policy")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.reward_head.state_dict().items()},
                  str(path / "reward_head.safetensors"))
        write_rm_config(path, self.kind, subfolder="policy", max_length=self.max_length, pooling="last")

    @classmethod
    def load(cls, path: Path, config: dict[str, Any], trust_remote_code: bool = False) -> HafRewardModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = path / config.get("subfolder", "policy")
        policy = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
        model = cls(policy, tokenizer, config.get("max_length", DEFAULT_MAX_LENGTH), make_reference=False)
        model.reward_head.load_state_dict(load_file(str(path / "reward_head.safetensors")))
        return model
