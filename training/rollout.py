"""Sampling completions from the policy (the rollout), and recomputing their logprobs in one forward pass.

Shapes: N rows (for GRPO, N = B prompts x G samples), P prompt tokens, T completion tokens.

generate() samples token by token with the KV cache. For each sampled token y_t it records
    logprob_t = log softmax(logits_t / temperature)[y_t]
(no top-k renormalisation: top-k only narrows which tokens may be drawn), so the same number comes back from
sequence_logprobs(model, prompts, completions, temperature) for the same model: that is what the PPO/GRPO ratio
pi_theta / pi_old needs. After a row's first EOS the row is done: later positions hold PAD, logprob 0, mask 0.
The EOS itself is part of the response (mask 1): the model chose to stop, and that choice is trained too.
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


def _decode(model, prompts, max_new_tokens, choose, use_cache):
    """The shared decoding loop. choose(logits [N, V]) -> (tokens [N], logprobs [N])."""
    n, p = prompts.shape
    device = prompts.device
    completions = torch.full((n, max_new_tokens), PAD_ID, dtype=torch.long, device=device)
    logprobs = torch.zeros(n, max_new_tokens, device=device)
    mask = torch.zeros(n, max_new_tokens, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    if use_cache:
        cache = model.new_kv_cache(n, p + max_new_tokens)
        logits = model(prompts, kv_cache=cache)[:, -1]  # prefill: the whole prompt at once
    else:
        sequence = torch.cat([prompts, completions], dim=1)  # the uncached path re-reads the whole prefix
        logits = model(prompts)[:, -1]
    steps = 0
    for t in range(max_new_tokens):
        token, logprob = choose(logits.float())
        alive = ~finished
        token = torch.where(alive, token, PAD_ID)
        completions[:, t] = token
        logprobs[:, t] = torch.where(alive, logprob, 0.0)
        mask[:, t] = alive.float()
        finished |= token == EOS_ID
        steps = t + 1
        if steps == max_new_tokens or bool(finished.all()):
            break
        if use_cache:
            logits = model(token[:, None], kv_cache=cache)[:, -1]
        else:
            sequence[:, p + t] = token
            logits = model(sequence[:, : p + t + 1])[:, -1]
    return completions[:, :steps], logprobs[:, :steps], mask[:, :steps]


def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True) -> Rollout:
    """Sample up to max_new_tokens per row from softmax(logits / temperature) (top-k: only the k likeliest).

    Stops early once every row has produced EOS, so T <= max_new_tokens. Reproducible given the generator.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy() for argmax decoding), got {temperature}")

    def sample(logits):
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
            out = _decode(model, prompts, max_new_tokens, sample, use_cache)
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


def sequence_logprobs(model, prompts, completions, temperature=1.0, with_entropy=False):
    """log pi(y_t | prompt, y_<t) for every completion token, from ONE forward pass: [N, T].

    logits = model(cat(prompts, completions)[:, :-1]); the logits at positions P-1 .. P+T-2 predict the
    completion tokens; logprobs = log_softmax(logits / temperature).gather(completion tokens).
    With with_entropy, also H_t = -sum_v p_v log p_v of that same distribution: [N, T].
    Differentiable; wrap in torch.no_grad() for the old-policy and reference passes. Padded positions hold
    whatever the model says there; callers multiply by the mask.
    """
    p = prompts.shape[1]
    sequence = torch.cat([prompts, completions], dim=1)
    logits = model(sequence[:, :-1])[:, p - 1 :].float() / temperature
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
