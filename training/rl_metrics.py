"""Diagnostics of an RL run that no loss needs: KL to the reference, the critic's explained variance, FLOPs.

    KL(pi_theta || pi_ref) per token  ~=  mean over sampled response tokens of  log pi_theta(y_t) - log pi_ref(y_t)
                                          (the k1 estimate: unbiased when y ~ pi_theta)
    explained variance                 =  1 - Var(R - V) / Var(R)   over response tokens (1: the critic is exact)
    FLOPs                              2 per multiply-add of the model's matmuls (forward_flops, grpo_step_flops;
                                          training/bench.py counts the shapes a step really ran with the same rule)
"""
import torch

from loss import masked_mean, masked_var

from .rollout import generate, sequence_logprobs


@torch.no_grad()
def kl_to_reference(model, ref_model, prompts, max_new_tokens, temperature, generator) -> float:
    """Per-token KL(pi_theta || pi_ref) on fresh samples of `prompts` (both at `temperature`)."""
    rollout = generate(model, prompts, max_new_tokens, temperature=temperature, generator=generator)
    ref_logprobs = sequence_logprobs(ref_model, prompts, rollout.completions, temperature=temperature)
    return masked_mean(rollout.logprobs - ref_logprobs, rollout.mask).item()


def explained_variance(values, returns, mask) -> float:
    """1 - Var(R - V) / Var(R) over the response tokens: 1 = the critic predicts the returns, <= 0 = no better
    than a constant. NaN when there are fewer than 2 response tokens or the returns do not vary."""
    if mask.sum() < 2:
        return float("nan")
    var_returns = masked_var(returns, mask).item()
    if var_returns == 0:
        return float("nan")
    return 1.0 - masked_var(returns - values, mask).item() / var_returns


def forward_flops(config, rows: int, length: int, context: int = 0) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of training.model.GPT over [rows, length] new positions
    that follow `context` positions already in a KV cache (0: a plain forward).

    Per token and layer: attention projections 4*C*C MACs (q, k, v, out), MLP 8*C*C, attention scores and
    their weighted sum 2*C*L_ctx (average context context + L/2 under the causal mask); plus the tied output
    layer V*C.
    """
    c, n_layer, vocab = config.n_embd, config.n_layer, config.vocab_size
    per_token_macs = n_layer * (12 * c * c + 2 * c * (context + length / 2)) + vocab * c
    return 2.0 * per_token_macs * rows * length


def grpo_step_flops(config, rows: int, prompt_len: int, completion_len: int, num_iterations: int,
                    reference_pass: bool, group_size: int = 1) -> float:
    """FLOPs of one GRPO training_step: the rollout (prefill + one position per new token with a KV cache),
    the reference pass (no grad) if used, and num_iterations forward+backward passes (backward = 2x forward).

    group_size G > 1: the G rows of a group share their prompt (training.rollout): the rollout prefills
    rows / G prompts, and each pass reads the first prompt_len - 1 positions once per group, then the
    completion_len positions of every row after them. G = 1: every row reads its whole sequence.
    """
    prompts = rows // group_size
    rollout = forward_flops(config, prompts, prompt_len) + sum(
        forward_flops(config, rows, 1, context=prompt_len + t - 1) for t in range(1, completion_len))
    if group_size > 1:
        one_pass = (forward_flops(config, prompts, prompt_len - 1)
                    + forward_flops(config, rows, completion_len, context=prompt_len - 1))
    else:
        one_pass = forward_flops(config, rows, prompt_len + completion_len - 1)
    return rollout + one_pass * (3 * num_iterations + (1 if reference_pass else 0))
