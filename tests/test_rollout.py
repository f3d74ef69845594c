import pytest
import torch
import torch.nn as nn

from training.model import GPT, GPTConfig, ValueModel
from training.rollout import generate, greedy, prompt_group_size, sequence_logprobs, values_for
from training.tasks import make_task
from training.tokenizer import EOS_ID, PAD_ID, TOKENIZER

V = TOKENIZER.vocab_size
TASK = make_task("sort")


def random_model(seed=0, scale=0.3):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=TASK.block_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model


def prompts(n=16, seed=0):
    return TASK.sample(n, torch.Generator().manual_seed(seed)).prompts


def close(a, b):
    scale = max(1.0, b.abs().max().item())
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_cached_and_uncached_decoding_agree():
    model, p = random_model(), prompts(32)
    a = generate(model, p, TASK.max_new_tokens, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = generate(model, p, TASK.max_new_tokens, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert torch.equal(a.completions, b.completions)
    assert torch.equal(a.mask, b.mask)
    assert close(a.logprobs, b.logprobs)
    assert torch.equal(greedy(model, p, 12), greedy(model, p, 12, use_cache=False))


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, None), (1.3, 3)])
def test_sampled_logprobs_equal_the_one_forward_recompute(temperature, top_k):
    model, p = random_model(1), prompts(32, 1)
    r = generate(model, p, TASK.max_new_tokens, temperature, top_k, torch.Generator().manual_seed(6))
    recomputed = sequence_logprobs(model, p, r.completions, temperature)
    assert recomputed.requires_grad, "sequence_logprobs must be differentiable"
    assert close(recomputed * r.mask, r.logprobs)
    assert (r.logprobs * r.mask).abs().sum() > 0


def test_top_k_only_draws_from_the_k_likeliest():
    model, p = random_model(2), prompts(64, 2)
    r = generate(model, p, 1, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        top2 = model(p)[:, -1].topk(2, dim=-1).indices
    assert (r.completions[:, :1] == top2).any(dim=1).all()


class EosAtRowIndex(nn.Module):
    """A fake policy: row i writes the digit 5 until it has written i tokens, then EOS (uncached decoding only)."""

    def __init__(self, prompt_len):
        super().__init__()
        self.prompt_len = prompt_len
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, kv_cache=None):
        n, length = idx.shape
        written = length - self.prompt_len  # tokens generated so far
        logits = torch.full((n, length, V), -20.0)
        five = TOKENIZER.encode("5")[0]
        for i in range(n):
            logits[i, -1, EOS_ID if written == i else five] = 20.0
        return logits


def test_eos_is_kept_in_the_mask_and_everything_after_is_padding():
    n = 4
    p = prompts(n)
    r = generate(EosAtRowIndex(p.shape[1]), p, 10, use_cache=False, generator=torch.Generator().manual_seed(0))
    assert r.completions.shape == (n, n), "generation must stop once every row has emitted EOS"
    for i in range(n):
        assert r.completions[i, i] == EOS_ID and r.mask[i, i] == 1
        assert torch.all(r.mask[i, : i + 1] == 1) and torch.all(r.mask[i, i + 1 :] == 0)
        assert torch.all(r.completions[i, i + 1 :] == PAD_ID)
        assert torch.all(r.logprobs[i, i + 1 :] == 0)
    assert r.lengths.tolist() == [1, 2, 3, 4]
    assert torch.equal(greedy(EosAtRowIndex(p.shape[1]), p, 10, use_cache=False), r.completions)


def test_entropy_of_a_uniform_policy_is_log_vocab():
    model = random_model()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    p = prompts(3)
    completions = torch.randint(2, V, (3, 5))
    logprobs, entropy = sequence_logprobs(model, p, completions, with_entropy=True)
    expected = torch.log(torch.tensor(float(V)))
    assert close(entropy, expected.expand(3, 5)) and close(logprobs, -expected.expand(3, 5))


def test_values_for_are_the_values_before_each_completion_token():
    critic = ValueModel(GPTConfig(vocab_size=V, block_size=TASK.block_size, n_layer=1, n_head=1, n_embd=16))
    with torch.no_grad():
        critic.value_head.weight.normal_(0, 1.0)
    p, completions = prompts(2), torch.randint(2, V, (2, 4))
    values = values_for(critic, p, completions)
    assert values.shape == (2, 4)
    full = torch.cat([p, completions], dim=1)
    for t in range(4):
        assert close(values[:, t], critic(full[:, : p.shape[1] + t])[:, -1])


def test_generate_restores_training_mode_and_rejects_zero_temperature():
    model = random_model()
    model.train()
    generate(model, prompts(2), 3, generator=torch.Generator().manual_seed(0))
    assert model.training
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompts(2), 3, temperature=0.0)


def test_shared_prefill_samples_what_repeated_prompts_sample():
    """generate(num_samples=G) prefills each prompt once; the samples, log-probs and masks are those of the G
    repeated prompts (same generator), rows b*G .. b*G+G-1 continuing prompt b."""
    model, p = random_model(3), prompts(8, 3)
    shared = generate(model, p, TASK.max_new_tokens, 0.9, generator=torch.Generator().manual_seed(1), num_samples=4)
    plain = generate(model, p.repeat_interleave(4, dim=0), TASK.max_new_tokens, 0.9,
                     generator=torch.Generator().manual_seed(1))
    assert shared.completions.shape[0] == 32
    assert torch.equal(shared.completions, plain.completions)
    assert torch.equal(shared.mask, plain.mask)
    assert close(shared.logprobs, plain.logprobs)
    recomputed = sequence_logprobs(model, p.repeat_interleave(4, dim=0), shared.completions, 0.9)
    assert close(recomputed * shared.mask, shared.logprobs), "the rollout's log-probs must be log pi_old"


def test_generate_is_deterministic_on_cpu():
    model, p = random_model(4), prompts(8, 4)
    runs = [generate(model, p, TASK.max_new_tokens, generator=torch.Generator().manual_seed(9), num_samples=3)
            for _ in range(2)]
    assert torch.equal(runs[0].completions, runs[1].completions)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)


def test_prompt_group_size_finds_runs_of_equal_prompts():
    p = prompts(4)
    assert prompt_group_size(p.repeat_interleave(8, dim=0)) == 8
    assert prompt_group_size(p) == 1
    assert prompt_group_size(p.repeat(2, 1)) == 1, "prompt b repeated after the others is not a group"
    ragged = torch.cat([p[:1].repeat(3, 1), p[1:2].repeat(2, 1)])
    assert prompt_group_size(ragged) == 1, "groups of unequal size are not shared"
    assert prompt_group_size(p[:1].repeat(6, 1)) == 6


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_shared_prompt_training_pass_equals_the_plain_pass(temperature):
    """sequence_logprobs runs a group's prompt once: log-probs, entropy and gradients as with G full rows."""
    model, p = random_model(5), prompts(6, 5)
    model.train()
    rows = p.repeat_interleave(4, dim=0)
    r = generate(model, p, TASK.max_new_tokens, temperature, generator=torch.Generator().manual_seed(2), num_samples=4)
    results = []
    for share in (True, False):
        model.zero_grad()
        logprobs, entropy = sequence_logprobs(model, rows, r.completions, temperature, with_entropy=True,
                                              share_prompts=share)
        ((logprobs * r.mask).sum() + entropy.sum()).backward()
        results.append((logprobs, entropy, [q.grad.clone() for q in model.parameters()]))
    (lp_a, ent_a, grad_a), (lp_b, ent_b, grad_b) = results
    assert close(lp_a, lp_b) and close(ent_a, ent_b)
    for a, b in zip(grad_a, grad_b):
        assert close(a, b)


def _tiny_grpo_run(share, steps=3, seed=0, group=4):
    """A seeded GRPO-style run (rollout, group advantages, one update per step); returns what it produced."""
    model = random_model(seed, scale=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator, data = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(steps):
        batch = TASK.sample(8, data)
        if share:
            r = generate(model, batch.prompts, TASK.max_new_tokens, generator=generator, num_samples=group)
        else:
            r = generate(model, batch.prompts.repeat_interleave(group, 0), TASK.max_new_tokens, generator=generator)
        rows = batch.prompts.repeat_interleave(group, 0)
        rewards = TASK.reward(r.completions, batch.answers.repeat_interleave(group, 0), kind="partial").view(-1, group)
        advantages = (rewards - rewards.mean(1, keepdim=True)).view(-1, 1)
        model.train()
        logprobs = sequence_logprobs(model, rows, r.completions, share_prompts=share)
        loss = -(torch.exp(logprobs - r.logprobs) * advantages * r.mask).sum() / r.mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out.append((r.completions, loss.detach()))
    return out, [q.detach().clone() for q in model.parameters()]


def test_a_seeded_run_is_the_same_with_and_without_sharing_and_deterministic():
    shared, weights_shared = _tiny_grpo_run(share=True)
    plain, weights_plain = _tiny_grpo_run(share=False)
    again, weights_again = _tiny_grpo_run(share=True)
    for (c_s, loss_s), (c_p, loss_p), (c_a, loss_a) in zip(shared, plain, again):
        assert torch.equal(c_s, c_p), "sharing the prompt must not change what is sampled"
        assert torch.allclose(loss_s, loss_p, rtol=1e-4, atol=1e-6)
        assert torch.equal(c_s, c_a) and torch.equal(loss_s, loss_a), "same seed, same numbers"
    for a, b, c in zip(weights_shared, weights_plain, weights_again):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        assert torch.equal(a, c)
