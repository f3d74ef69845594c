"""loss/: masked reductions, the advantage-estimator zoo, DAPO shaping. Hand-computed values and properties."""
import math

import pytest
import torch

from loss import (clip_fraction, grpo_passk_advantages, keep_informative_groups, masked_mean, masked_sum, masked_var,
                  masked_whiten, overlong_penalty, reinforce_plus_plus_advantages, remax_advantages, rloo_advantages)

INF, NAN = float("inf"), float("nan")
VALUES = torch.tensor([[1.0, 2.0, INF], [3.0, NAN, 4.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 1]])


def close(actual, expected):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * max(1.0, expected.abs().max().item()))


# ---------------------------------------------------------------- masked.py

@pytest.mark.parametrize("mask", [MASK, MASK.bool(), MASK.float()])
def test_masked_sum_and_mean_ignore_padding_even_inf_and_nan(mask):
    close(masked_sum(VALUES, mask), 10.0)
    close(masked_sum(VALUES, mask, dim=-1), [3.0, 7.0])
    close(masked_sum(VALUES, mask, dim=-1, keepdim=True), [[3.0], [7.0]])
    close(masked_mean(VALUES, mask), 2.5)
    close(masked_mean(VALUES, mask, dim=-1), [1.5, 3.5])
    close(masked_mean(VALUES, mask, dim=0), [2.0, 2.0, 4.0])


def test_masked_mean_of_an_empty_mask_is_zero_with_a_zero_gradient():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    result = masked_mean(values, mask, dim=-1)
    close(result, [0.0, 3.0])
    result.sum().backward()
    close(values.grad, [[0.0, 0.0], [1.0, 0.0]])
    assert masked_mean(values, torch.zeros(2, 2)).item() == 0.0


def test_masked_var_matches_torch_var():
    values = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, -99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    close(masked_var(values, mask), torch.tensor([1.0, 2.0, 3.0, 4.0]).var())             # 5/3
    close(masked_var(values, mask, unbiased=False), torch.tensor([1.0, 2.0, 3.0, 4.0]).var(unbiased=False))
    with pytest.raises(ValueError):
        masked_var(values, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_masked_whiten_gives_mean_zero_std_one_on_the_mask():
    generator = torch.Generator().manual_seed(0)
    values = 3 + 2 * torch.randn(4, 7, generator=generator)
    mask = torch.arange(7) < torch.tensor([[7], [3], [5], [1]])
    whitened = masked_whiten(values, mask)
    close(masked_mean(whitened, mask), 0.0)
    close(masked_var(whitened, mask), 1.0)
    kept_mean = masked_whiten(values, mask, shift_mean=False)
    close(masked_mean(kept_mean, mask), masked_mean(values, mask))
    close(whitened, (values - masked_mean(values, mask)) / torch.sqrt(masked_var(values, mask) + 1e-8))


# ---------------------------------------------------------------- advantages.py

def test_rloo_is_reward_minus_mean_of_the_others():
    close(rloo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]])), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]])
    generator = torch.Generator().manual_seed(1)
    rewards = torch.rand(3, 5, generator=generator)
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / 4
    close(rloo_advantages(rewards), rewards - others)
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_passk_pushes_only_the_best_sample_by_its_margin():
    rewards = torch.tensor([[0.2, 0.9, 0.5], [0.0, 1.0, 1.0], [0.3, 0.3, 0.3]])
    close(grpo_passk_advantages(rewards, normalize_std=False), [[0.0, 0.4, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    std = rewards[0].std().item()                                   # unbiased, as verl
    close(grpo_passk_advantages(rewards)[0], [0.0, 0.4 / (std + 1e-6), 0.0])
    with pytest.raises(ValueError):
        grpo_passk_advantages(torch.ones(2, 1))


def test_remax_subtracts_the_greedy_reward():
    close(remax_advantages(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.5, 0.0, 1.0])), [0.5, 0.0, -0.5])
    with pytest.raises(ValueError):
        remax_advantages(torch.ones(3), torch.ones(2))


def test_reinforce_plus_plus_whitens_the_return_to_go():
    token_rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])   # 5.0 sits on padding: ignored
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    returns = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0])                 # gamma = 1: reward-to-go on the mask
    whitened = (returns - 1.4) / math.sqrt(0.3 + 1e-8)                # mean 1.4, unbiased var 0.3
    close(reinforce_plus_plus_advantages(token_rewards, mask), [whitened[:3].tolist(), whitened[3:].tolist() + [0.0]])
    discounted = torch.tensor([0.25, 0.5, 1.0, 1.0, 2.0])             # gamma = 0.5
    expected = (discounted - discounted.mean()) / torch.sqrt(discounted.var() + 1e-8)
    close(reinforce_plus_plus_advantages(token_rewards, mask, gamma=0.5),
          [expected[:3].tolist(), expected[3:].tolist() + [0.0]])


# ---------------------------------------------------------------- dapo.py and metrics.py

def test_overlong_penalty_is_zero_then_linear_then_minus_one():
    penalty = overlong_penalty([0, 6, 7, 8, 10, 11, 20], max_len=10, cache_len=4)
    close(penalty, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0])
    close(overlong_penalty(torch.tensor([9]), max_len=10, cache_len=10), [-0.9])
    for cache_len in (0, 11):
        with pytest.raises(ValueError):
            overlong_penalty([5], max_len=10, cache_len=cache_len)


def test_keep_informative_groups_drops_all_equal_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5001]])
    keep = keep_informative_groups(rewards)
    assert keep.dtype == torch.bool and keep.tolist() == [False, True, False, True]
    assert rewards[keep].shape == (2, 3)


def test_clip_fraction_counts_the_tokens_whose_gradient_is_cut():
    ratio = torch.tensor([[1.3, 1.3, 0.7, 0.7, 1.0, 5.0]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert clip_fraction(ratio, advantages, mask, 0.2, 0.2) == pytest.approx(2 / 5)   # (1.3, +) and (0.7, -)
    assert clip_fraction(ratio, advantages, mask, 0.2, 0.4) == pytest.approx(1 / 5)   # clip-higher spares 1.3
