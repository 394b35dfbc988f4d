"""The embedded CPU default engine: transformers `generate` on a model this process owns."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from transformers import PreTrainedModel

from alignray.algorithms.logprobs import logprobs_from_logits
from alignray.rollout.engine import Completion, SamplingSettings, truncate_at_stop
from alignray.rollout.lean_decode import LeanDecoder, supports


class HFEngine:
    """Samples a left-padded batch and reads per-token log-probs from the raw logits: with the lean loop of
    `alignray.rollout.lean_decode` for Llama-architecture models (`lean=True`, the default), else
    `model.generate`."""

    def __init__(self, model: PreTrainedModel, pad_token_id: int, eos_token_id: int, lean: bool = True):
        self.model = model.eval()
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.params = dict(self.model.named_parameters())
        self.lean = LeanDecoder(self.model) if lean and supports(self.model) else None

    def _left_pad(self, seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s):
                ids[i, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
                mask[i, width - len(s):] = 1
        return ids, mask

    @torch.no_grad()
    def generate(self, prompts: list[np.ndarray], sampling: SamplingSettings) -> list[list[Completion]]:
        if not prompts:
            return []
        ids, mask = (t.to(self.model.device) for t in self._left_pad(prompts))  # a colocated rank's GPU model
        stop = {self.eos_token_id, *sampling.stop_token_ids}
        torch.manual_seed(sampling.seed)
        if self.lean is not None:
            new_tokens, logprobs = self.lean.sample(ids, mask, sampling.n, sampling.max_new_tokens,
                                                    sampling.temperature, sampling.top_p, stop,
                                                    self.pad_token_id)
        else:
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, temperature=sampling.temperature,
                top_p=sampling.top_p, top_k=0, max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.n, eos_token_id=sorted(stop), pad_token_id=self.pad_token_id,
                output_logits=True, return_dict_in_generate=True,
            )
            new_tokens = out.sequences[:, ids.shape[1]:]
            # log-probs as z[y] − logsumexp(z), step by step from the raw logits (no [B*n, T, V] stack)
            logprobs = torch.stack([logprobs_from_logits(step_logits.float(), new_tokens[:, t],
                                                         sampling.temperature)
                                    for t, step_logits in enumerate(out.logits)], dim=1)
        tokens_np = new_tokens.to(torch.int32).cpu().numpy()
        logprobs_np = logprobs.cpu().numpy().astype(np.float32)
        completions: list[list[Completion]] = []
        for p in range(len(prompts)):
            group = []
            for j in range(sampling.n):
                row = p * sampling.n + j
                keep, reason = truncate_at_stop(tokens_np[row], stop)
                group.append(Completion(tokens_np[row, :keep].copy(), logprobs_np[row, :keep].copy(), reason))
            completions.append(group)
        return completions

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        count = 0
        for name, tensor in named_tensors:
            param = self.params.get(name)
            if param is None:
                raise KeyError(f"engine has no parameter '{name}'")
            if param.shape != tensor.shape:
                raise ValueError(f"parameter '{name}': engine shape {tuple(param.shape)}, "
                                 f"update {tuple(tensor.shape)}")
            param.copy_(tensor)
            count += 1
        return count

    @torch.no_grad()
    def logprobs(self, prompts: list[np.ndarray], responses: list[np.ndarray],
                 temperature: float) -> list[np.ndarray]:
        out = []
        for prompt, response in zip(prompts, responses, strict=True):
            seq = torch.as_tensor(np.concatenate([prompt, response]), dtype=torch.long,
                                  device=self.model.device).unsqueeze(0)
            keep = len(response) + 1  # the LM head runs on positions len(prompt) − 1 … end only
            logits = self.model(seq, logits_to_keep=keep).logits[0, :-1]
            lp = logprobs_from_logits(logits, seq[0, len(prompt):], temperature)
            out.append(lp.float().cpu().numpy().astype(np.float32))
        return out
