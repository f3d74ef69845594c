"""Diagnostics of an RL run that no loss needs: KL to the reference, the critic's explained variance, FLOPs.

    KL(pi_theta || pi_ref) per token  ~=  mean over sampled response tokens of  log pi_theta(y_t) - log pi_ref(y_t)
                                          (the k1 estimate: unbiased when y ~ pi_theta)
    explained variance                 =  1 - Var(R - V) / Var(R)   over response tokens (1: the critic is exact)
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


def forward_flops(config, rows: int, length: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of training.model.GPT over [rows, length] tokens.

    Per token and layer: attention projections 4*C*C MACs (q, k, v, out), MLP 8*C*C, attention scores and
    their weighted sum 2*C*L_ctx (average context L/2 under the causal mask); plus the tied output layer V*C.
    """
    c, n_layer, vocab = config.n_embd, config.n_layer, config.vocab_size
    per_token_macs = n_layer * (12 * c * c + 2 * c * (length / 2)) + vocab * c
    return 2.0 * per_token_macs * rows * length


def grpo_step_flops(config, rows: int, prompt_len: int, completion_len: int, num_iterations: int,
                    reference_pass: bool) -> float:
    """FLOPs of one GRPO training_step: the rollout (prefill + one position per new token with a KV cache),
    the reference pass (no grad) if used, and num_iterations forward+backward passes (backward = 2x forward)."""
    full = prompt_len + completion_len - 1          # the teacher-forced sequence sequence_logprobs reads
    rollout = forward_flops(config, rows, prompt_len) + sum(
        forward_flops(config, rows, prompt_len + t) / (prompt_len + t) for t in range(1, completion_len))
    passes = forward_flops(config, rows, full) * (3 * num_iterations + (1 if reference_pass else 0))
    return rollout + passes
