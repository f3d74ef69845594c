"""Sampling completions from the policy (the rollout), and recomputing their logprobs in one forward pass.

Shapes: N rows (for GRPO, N = B prompts x G samples), P prompt tokens, T completion tokens.

generate() samples token by token with the KV cache. For each sampled token y_t it records
    logprob_t = log softmax(logits_t / temperature)[y_t]
(no top-k renormalisation: top-k only narrows which tokens may be drawn), so the same number comes back from
sequence_logprobs(model, prompts, completions, temperature) for the same model: that is what the PPO/GRPO ratio
pi_theta / pi_old needs. After a row's first EOS the row is done: later positions hold PAD, logprob 0, mask 0.
The EOS itself is part of the response (mask 1): the model chose to stop, and that choice is trained too.

Where the time goes, and what this file does about it (the tiny model makes every kernel small, so the cost of
launching kernels matters as much as the arithmetic; bench.py measures each point):
  * Shared prefill. generate(..., num_samples=G) runs each prompt through the model ONCE and copies its KV cache
    to the G rows of its group (KVCache.repeat_rows); it does not prefill B * G copies of the same B prompts.
    The prompt is about half of the tokens the rollout reads (11 of 22 on `sort`), so this removes almost half
    of its FLOPs.
  * A lean decoding loop. The output buffers are allocated once; each step writes its column in place and does
    no more small operations than it must: the mask is worked out once at the end from where the first EOS
    is, and `finished.all()` (which makes a GPU wait for the step to finish) is asked every step only on the
    CPU, where it costs nothing, and every few steps on a GPU (the extra all-PAD columns are cut off at the end).
  * Shared prompts in the training pass. sequence_logprobs sees GRPO's layout (runs of G equal prompts) and
    runs each prompt's positions once too, then only the completion positions per row, against the shared keys
    and values; the gradient of the G rows flows back into the one shared prompt. Same numbers (up to float
    rounding: tests/test_rollout.py), fewer FLOPs: on `sort` at 32 x 8 with 11-token completions the pass reads
    32 x 10 + 256 x 11 = 3,136 positions instead of 256 x 21 = 5,376.
  * One log-softmax. The log-probs and the entropy both come from the same log_softmax tensor.
"""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .tokenizer import EOS_ID, PAD_ID


@dataclass
class Rollout:
    completions: torch.Tensor  # [N, T] long, PAD after the first EOS
    logprobs: torch.Tensor  # [N, T] float, 0 after the first EOS
    mask: torch.Tensor  # [N, T] float, 1 up to and including the first EOS, 0 after

    @property
    def lengths(self) -> torch.Tensor:
        """Response length per row (EOS counted): [N] long."""
        return self.mask.sum(dim=1).long()


def response_mask(completions: torch.Tensor) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after: [N, T] float."""
    is_eos = completions == EOS_ID
    eos_before = is_eos.cumsum(dim=1) - is_eos.long()  # how many EOS strictly before position t
    return (eos_before == 0).float()


def _decode(model, prompts, max_new_tokens, choose, use_cache, num_samples=1):
    """The shared decoding loop over N = B * num_samples rows. choose(logits [N, V]) -> (tokens [N], logprobs [N])."""
    b, p = prompts.shape
    n = b * num_samples
    device = prompts.device
    completions = torch.full((n, max_new_tokens), PAD_ID, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, max_new_tokens, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    if use_cache:
        cache = model.new_kv_cache(b, p + max_new_tokens)
        logits = model(prompts, kv_cache=cache)[:, -1]  # prefill: each prompt once, the whole prompt at once
        if num_samples > 1:  # ... then its keys and values are copied to the num_samples rows of its group
            cache = cache.repeat_rows(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
    else:
        prompts = prompts.repeat_interleave(num_samples, dim=0)
        sequence = torch.cat([prompts, completions], dim=1)  # the uncached path re-reads the whole prefix
        logits = model(prompts)[:, -1]
    check_every = 1 if device.type == "cpu" else 4  # on a GPU, reading `finished` waits for the step to end
    for t in range(max_new_tokens):
        token, logprob = choose(logits.float())
        token.masked_fill_(finished, PAD_ID)  # a finished row writes PAD (its logprob is zeroed at the end)
        completions[:, t] = token
        logprobs[:, t] = logprob
        finished |= token == EOS_ID
        if t + 1 == max_new_tokens or ((t + 1) % check_every == 0 and bool(finished.all())):
            break
        if use_cache:
            logits = model(token[:, None], kv_cache=cache)[:, -1]
        else:
            sequence[:, p + t] = token
            logits = model(sequence[:, : p + t + 1])[:, -1]
    mask = response_mask(completions)
    steps = int(mask.any(dim=0).sum())  # the columns up to the last row's EOS (or all of them)
    mask = mask[:, :steps]
    return completions[:, :steps], torch.where(mask.bool(), logprobs[:, :steps], 0.0), mask


def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True,
             num_samples=1) -> Rollout:
    """Sample up to max_new_tokens per row from softmax(logits / temperature) (top-k: only the k likeliest).

    num_samples: completions per prompt; the N * num_samples rows come back grouped, rows
    b * num_samples .. b * num_samples + num_samples - 1 continuing prompt b (GRPO's groups). Each prompt is
    prefilled once and its KV cache shared by its group (the same samples as repeating the prompts first).
    Stops early once every row has produced EOS, so T <= max_new_tokens. Reproducible given the generator.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy() for argmax decoding), got {temperature}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")

    def sample(logits):
        if temperature != 1.0:  # dividing by 1.0 changes nothing: skip the kernel
            logits = logits / temperature
        logp = F.log_softmax(logits, dim=-1)
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            probs = F.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
        else:
            probs = logp.exp()
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return token, logp.gather(1, token[:, None]).squeeze(1)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = _decode(model, prompts, max_new_tokens, sample, use_cache, num_samples)
        return Rollout(*(x.clone() for x in out))  # clone: plain tensors that autograd may use later
    finally:
        model.train(was_training)


def greedy(model, prompts, max_new_tokens, use_cache=True) -> torch.Tensor:
    """Argmax decoding (for evaluation): completions [N, T], PAD after the first EOS."""

    def argmax(logits):
        return logits.argmax(dim=-1), torch.zeros(logits.shape[0], device=logits.device)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            completions = _decode(model, prompts, max_new_tokens, argmax, use_cache)[0]
        return completions.clone()
    finally:
        model.train(was_training)


def prompt_group_size(prompts: torch.Tensor) -> int:
    """G when the rows of prompts [N, P] come in runs of G equal prompts (rows b*G .. b*G+G-1 all the same, as
    GRPO lays out its groups), else 1."""
    n = prompts.shape[0]
    if n < 2:
        return 1
    same = (prompts[1:] == prompts[:-1]).all(dim=1).tolist()  # same[i]: row i + 1 repeats row i
    g = 1
    while g < n and same[g - 1]:
        g += 1
    if g == 1 or n % g or not all(same[i - 1] for i in range(1, n) if i % g):
        return 1
    return g


def completion_logits(model, prompts, completions, share_prompts=True) -> torch.Tensor:
    """The logits [N, T, V] at the positions that predict the completion tokens, with autograd as it is.

    logits = model(cat(prompts, completions)[:, :-1]); the positions P-1 .. P+T-2 predict the T completion tokens.
    With share_prompts, rows that repeat a prompt in runs of G (prompt_group_size) read it once: the first P-1
    prompt tokens of each group fill a KV cache (one row per group), repeat_rows(G) hands it to the G rows, and
    only the last prompt token and the completion run per row. Needs a model with the KV cache of
    training.model.GPT; any other module gets the plain single pass.
    """
    p, t = prompts.shape[1], completions.shape[1]
    g = prompt_group_size(prompts) if share_prompts and p > 1 and t > 0 and hasattr(model, "new_kv_cache") else 1
    if g > 1:
        shared = prompts[::g]
        cache = model.new_kv_cache(shared.shape[0], p - 1 + t)
        model(shared[:, :-1], kv_cache=cache)  # the shared positions, once per group
        return model(torch.cat([prompts[:, -1:], completions[:, :-1]], dim=1), kv_cache=cache.repeat_rows(g))
    sequence = torch.cat([prompts, completions], dim=1)
    return model(sequence[:, :-1])[:, p - 1 :]


def sequence_logprobs(model, prompts, completions, temperature=1.0, with_entropy=False, share_prompts=True):
    """log pi(y_t | prompt, y_<t) for every completion token, from ONE forward pass: [N, T].

    logits = model(cat(prompts, completions)[:, :-1]); the logits at positions P-1 .. P+T-2 predict the
    completion tokens; logprobs = log_softmax(logits / temperature).gather(completion tokens).
    With with_entropy, also H_t = -sum_v p_v log p_v of that same distribution: [N, T], from the same
    log_softmax tensor (p_v = exp(log p_v)): one softmax pass serves both.
    Rows that repeat a prompt (GRPO's groups) share its positions: see completion_logits.
    Differentiable; wrap in torch.no_grad() for the old-policy and reference passes. Padded positions hold
    whatever the model says there; callers multiply by the mask.
    """
    logits = completion_logits(model, prompts, completions, share_prompts).float()
    if temperature != 1.0:
        logits = logits / temperature
    all_logprobs = F.log_softmax(logits, dim=-1)
    logprobs = all_logprobs.gather(-1, completions[..., None]).squeeze(-1)
    if not with_entropy:
        return logprobs
    entropy = -(all_logprobs.exp() * all_logprobs).sum(dim=-1)
    return logprobs, entropy


def values_for(value_model, prompts, completions) -> torch.Tensor:
    """The critic's V(state before completion token t), t = 0..T-1: [N, T] (same slicing as above)."""
    p = prompts.shape[1]
    sequence = torch.cat([prompts, completions], dim=1)
    return value_model(sequence[:, :-1])[:, p - 1 :]
