"""A lean sampling loop for Llama-architecture models on CPU: the HF engine's fast path.

`transformers.generate` spends most of a step of a small model outside the matrix products (mask building,
cache bookkeeping, logits processors, per-layer wrappers). This loop runs the same modules of the same model
(norms, projections, MLP, rotary embedding) with a preallocated KV cache and one boolean key mask: the prompts
are prefilled once each (not once per sample) and the cache is then repeated for the `n` samples; every step
is one forward of the newest token, sampling from softmax(logits / T) (top-p as transformers filters it).
Models it does not know fall back to `generate` (see `supports`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from alignray.algorithms.logprobs import logprobs_from_logits

SUPPORTED = {"llama"}


def supports(model) -> bool:
    """Llama models on CPU (the loop allocates its cache and masks on the CPU; on GPU `generate` or vLLM
    serves)."""
    cfg = model.config
    return (model.device.type == "cpu" and getattr(cfg, "model_type", None) in SUPPORTED
            and not getattr(cfg, "pretraining_tp", 1) > 1
            and hasattr(model, "model") and hasattr(model.model, "rotary_emb"))


class LeanDecoder:
    def __init__(self, model):
        self.model, self.cfg = model, model.config
        self.heads = self.cfg.num_attention_heads
        self.kv_heads = getattr(self.cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(self.cfg, "head_dim", None) or self.cfg.hidden_size // self.heads

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: list[tuple[torch.Tensor,
                                                                                     torch.Tensor]],
                 start: int, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states of the last position for `ids` [B, T] written at cache slots start … start+T−1;
        `mask` [B, 1, T, start+T] additive (0 = attend, −inf = not)."""
        m = self.model.model
        h = m.embed_tokens(ids)
        cos, sin = m.rotary_emb(h, positions)
        b, t = ids.shape
        end = start + t
        for layer, (k_cache, v_cache) in zip(m.layers, cache, strict=True):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k_cache[:, :, start:end] = k
            v_cache[:, :, start:end] = v
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
            if self.kv_heads != self.heads:
                keys = keys.repeat_interleave(self.heads // self.kv_heads, 1)
                values = values.repeat_interleave(self.heads // self.kv_heads, 1)
            if t == 1:  # one query: two small matmuls beat sdpa's CPU kernel at this size
                out = torch.softmax(torch.matmul(q, keys.transpose(2, 3)) * attn.scaling + mask,
                                    dim=-1) @ values
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
            h = h + attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return m.norm(h[:, -1:])

    @torch.no_grad()
    def sample(self, ids: torch.Tensor, attention_mask: torch.Tensor, n: int, max_new_tokens: int,
               temperature: float, top_p: float, stop_ids: set[int], pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts [P, L] → (tokens [P·n, T], log-probs [P·n, T] of each token under softmax(z /
        T)); rows p·n … p·n+n−1 are prompt p's samples, finished rows are padded with `pad_id`, T ≤
        max_new_tokens (it stops when every row has stopped). A step's log-probs are read from its logits at
        once, so no [P·n, T, V] tensor is ever held (with a real vocabulary that would be gigabytes)."""
        p, width = ids.shape
        total = width + max_new_tokens
        dtype = self.model.dtype
        cache = [(torch.zeros(p, self.kv_heads, total, self.head_dim, dtype=dtype),
                  torch.zeros(p, self.kv_heads, total, self.head_dim,
                              dtype=dtype)) for _ in self.model.model.layers]
        valid = attention_mask.bool()
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        # pad rows see themselves: no NaN
        see = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool)
        hidden = self._forward(ids, positions, cache, 0, _additive(see, dtype)[:, None])
        # every sample of a prompt shares its prefill: repeat the cache and the last hidden state n times
        cache = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in cache]
        hidden = hidden.repeat_interleave(n, 0)
        keys = torch.full((p * n, total), float("-inf"), dtype=dtype)
        keys[:, :width] = _additive(valid.repeat_interleave(n, 0), dtype)
        next_pos = attention_mask.sum(-1, keepdim=True).repeat_interleave(n, 0)
        head = self.model.lm_head
        stop = torch.tensor(sorted(stop_ids), dtype=torch.long)
        done = torch.zeros(p * n, dtype=torch.bool)
        tokens, logprobs = [], []
        for step in range(max_new_tokens):
            scores = head(hidden)[:, -1].float() / temperature
            probs = torch.softmax(_top_p(scores, top_p), dim=-1)
            token = torch.multinomial(probs, 1).squeeze(1)
            token = torch.where(done, torch.full_like(token, pad_id), token)
            tokens.append(token)
            logprobs.append(logprobs_from_logits(scores, token))  # z[y] − logsumexp(z), z = logits / T
            done = done | torch.isin(token, stop)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            slot = width + step
            keys[:, slot] = 0.0
            hidden = self._forward(token[:, None], next_pos, cache, slot, keys[:, None, None, :slot + 1])
            next_pos = next_pos + 1
        return torch.stack(tokens, 1), torch.stack(logprobs, 1)


def _additive(see: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(see.shape, dtype=dtype).masked_fill(~see, float("-inf"))


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: drop the tokens outside the smallest set of probability mass ≥
    top_p."""
    if top_p >= 1.0:
        return scores
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
