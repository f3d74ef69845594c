"""A tiny GPT in the style of nanoGPT, with a KV cache for fast sampling, and a value model for PPO.

    x_0 = wte[idx] + wpe[pos]
    x   = x + Attention(LayerNorm(x))     } n_layer pre-LayerNorm blocks
    x   = x + MLP(LayerNorm(x))           }
    logits = LayerNorm(x) @ wte^T         (tied embeddings: the output layer reuses the token embedding)

Attention is causal: position i attends to positions <= i (F.scaled_dot_product_attention does the softmax).

KV cache. When sampling, each new token only needs its own query against the keys and values of every earlier
position; those do not change, so we keep them in preallocated buffers (KVCache) instead of recomputing the whole
prefix at every step. `model(prompts, kv_cache=cache)` fills the cache with the prompt ("prefill"), then
`model(last_token[:, None], kv_cache=cache)` costs one position per step. The logits are the same either way
(tests/test_model.py checks it).

Sharing a prompt. GRPO samples G completions of every prompt, so the G rows of a group start with the same
prompt tokens, whose keys and values are therefore the same too. `cache.repeat_rows(G)` copies a cache filled
from B prompts into a cache of B * G rows (row b -> rows b*G .. b*G+G-1): the prompt is run once, not G times.
The copy is an ordinary tensor operation, so gradients flow through it to the shared prompt positions
(training.rollout uses this for the rollout and for the training pass).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int  # the longest sequence (prompt + completion) the model handles
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0


PRESETS = {
    "nano": dict(n_layer=3, n_head=3, n_embd=48),  # ~87k parameters on the course vocabulary
    "micro": dict(n_layer=4, n_head=4, n_embd=128),  # ~0.8M parameters
}


class UnknownPresetError(ValueError):
    """Asked for a model size that is not in PRESETS."""


class KVCache:
    """Keys and values of every layer for the positions seen so far, in preallocated buffers.

    keys[layer], values[layer]: [N, n_head, max_len, head_dim]; `length` = how many positions are filled.
    The buffers start uninitialised (torch.empty): positions past `length` are never read. Autograd can run
    through a cache (the training pass shares prompts this way), as long as a cache whose keys a graph has read
    is not written again: fill one, then go on in its repeat_rows() copy.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len=None, device=None, dtype=torch.float32):
        max_len = max_len or config.block_size
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write the new positions' k, v [N, H, L, D] after the filled ones; return all keys, values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def repeat_rows(self, repeats: int) -> "KVCache":
        """A new cache of N * repeats rows: row b of this one becomes rows b*repeats .. b*repeats + repeats - 1
        (like Tensor.repeat_interleave). Only the filled positions are copied; differentiable."""
        out = KVCache.__new__(KVCache)
        out.length = self.length
        out.keys, out.values = [], []
        for src, dst in ((self.keys, out.keys), (self.values, out.values)):
            for buffer in src:
                n, h, max_len, d = buffer.shape
                new = buffer.new_empty(n * repeats, h, max_len, d)
                # one broadcasting copy: [n, 1, h, length, d] -> [n, repeats, h, length, d]
                new.view(n, repeats, h, max_len, d)[:, :, :, : self.length] = buffer[:, None, :, : self.length]
                dst.append(new)
        return out


class CausalSelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + causal mask) V, over n_head heads of size d = n_embd / n_head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, kv_cache: KVCache | None = None, layer: int = 0):
        n, length, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (t.view(n, length, self.n_head, c // self.n_head).transpose(1, 2) for t in (q, k, v))
        start = 0
        if kv_cache is not None:
            start = kv_cache.length
            k, v = kv_cache.store(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if start == 0:  # no earlier positions: the plain causal mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, dropout_p=dropout)
        elif length == 1:  # one new position may see every earlier one: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # several new positions after a filled cache (a shared prompt): query i sees keys j <= start + i.
            # Written out: with an explicit mask, SDPA's CPU kernel is slower than these few ops at this size.
            allowed = torch.arange(start + length, device=x.device)[None, :] <= (
                start + torch.arange(length, device=x.device)[:, None]
            )
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            weights = F.dropout(scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1), dropout)
            y = weights @ v
        y = y.transpose(1, 2).contiguous().view(n, length, c)
        return self.c_proj(y)


class MLP(nn.Module):
    """Linear(C -> 4C), GELU, Linear(4C -> C)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), kv_cache, layer)
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Embeddings, the blocks and the final LayerNorm: token ids [N, L] -> hidden states [N, L, C]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)

    def forward(self, idx, kv_cache: KVCache | None = None):
        start = kv_cache.length if kv_cache is not None else 0
        length = idx.shape[1]
        if start + length > self.config.block_size:
            raise ValueError(f"sequence of {start + length} tokens is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + length, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for layer, block in enumerate(self.blocks):
            x = block(x, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.length += length
        return self.ln_f(x)


def _init_weights(module: nn.Module, n_layer: int):
    """nanoGPT's init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 * n_layer)."""
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
        elif name.endswith(".weight") and p.dim() == 2:
            nn.init.normal_(p, 0.0, 0.02)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)


class GPT(nn.Module):
    """The policy: token ids [N, L] -> next-token logits [N, L, V]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.trunk = Trunk(config)
        _init_weights(self, config.n_layer)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        h = self.trunk(idx, kv_cache)
        return F.linear(h, self.trunk.wte.weight)  # tied: logits = h @ wte^T

    def new_kv_cache(self, batch_size: int, max_len=None) -> KVCache:
        """An empty cache for `batch_size` rows, on the model's device and dtype."""
        p = self.trunk.wte.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)


class ValueModel(nn.Module):
    """The PPO critic: the same trunk with a scalar head. Token ids [N, L] -> values [N, L] (float)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.trunk = Trunk(config)
        self.value_head = nn.Linear(config.n_embd, 1)
        _init_weights(self, config.n_layer)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.value_head(self.trunk(idx)).squeeze(-1)

    @classmethod
    def from_policy(cls, policy: GPT) -> "ValueModel":
        """A critic whose trunk starts as a copy of the policy's (common in PPO for LMs); value head zero."""
        critic = cls(policy.config).to(policy.trunk.wte.weight.device)
        critic.trunk.load_state_dict(policy.trunk.state_dict())
        nn.init.zeros_(critic.value_head.weight)
        nn.init.zeros_(critic.value_head.bias)
        return critic


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable numbers (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def make_model(preset: str, vocab_size: int, block_size: int, dropout: float = 0.0) -> GPT:
    """make_model("nano", TOKENIZER.vocab_size, task.block_size) -> a freshly initialised GPT."""
    if preset not in PRESETS:
        raise UnknownPresetError(f"unknown model preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, dropout=dropout, **PRESETS[preset]))
