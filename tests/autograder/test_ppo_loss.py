"""Graded tests of the PPO exercise (exercises/ppo_loss.py): compute_gae and PPOLoss.

Reference values: hand-computed cases (the lesson's "compute GAE by hand" exercise), properties,
and the stored snapshot snapshots/ppo_loss.json. The module comes from the `ppo_loss` fixture (--impl).
"""
import math

import pytest
import torch

from tests.autograder.snapshots import assert_close, assert_metrics, is_close, load_snapshot, snapshot_label, tensor

# A 3-step episode: reward 1 at the end, gamma 0.9, lambda 0.8 (gamma * lambda = 0.72).
#   delta_2 = 1 + 0.9 * 0   - 0.7 = 0.3      A_2 = 0.3
#   delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03     A_1 = 0.03 + 0.72 * 0.3   = 0.246
#   delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04     A_0 = 0.04 + 0.72 * 0.246 = 0.21712
EPISODE_REWARDS = [0.0, 0.0, 1.0]
EPISODE_VALUES = [0.5, 0.6, 0.7]
EPISODE_ADVANTAGES = [0.21712, 0.246, 0.3]
EPISODE_RETURNS = [0.71712, 0.846, 1.0]


def random_episode(seed, B=3, T=6, lengths=(6, 4, 1), dtype=torch.float32):
    """Rewards, values and a prefix mask; padding left at 0 (tests add their own garbage)."""
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).to(dtype)
    rewards = torch.randn(B, T, generator=generator, dtype=dtype) * mask
    values = torch.randn(B, T, generator=generator, dtype=dtype) * mask
    return rewards, values, mask


# ---------------------------------------------------------------- compute_gae

@pytest.mark.points(3)
def test_gae_by_hand_three_steps(ppo_loss):
    rewards, values = torch.tensor([EPISODE_REWARDS]), torch.tensor([EPISODE_VALUES])
    advantages, returns = ppo_loss.compute_gae(rewards, values, gamma=0.9, lam=0.8)
    assert advantages.shape == (1, 3) and returns.shape == (1, 3), (
        f"compute_gae must return two [B, T] tensors, got {tuple(advantages.shape)} and {tuple(returns.shape)}")
    if is_close(advantages, [[0.256, 0.27, 0.3]]):
        pytest.fail("GAE's trace decays by lam only: A_t = delta_t + gamma * lam * A_{t+1} (gamma is missing)")
    assert_close(advantages, [EPISODE_ADVANTAGES], "GAE advantages of the 3-step episode",
                 "walk backwards: delta_t = r_t + gamma V_{t+1} - V_t (V_3 = 0), A_t = delta_t + gamma lam A_{t+1}.")
    if is_close(returns, [EPISODE_ADVANTAGES]):
        pytest.fail("returns equal the advantages: the critic's target is returns = advantages + values")
    assert_close(returns, [EPISODE_RETURNS], "GAE returns of the 3-step episode", "returns = advantages + values.")


@pytest.mark.points(2)
def test_gae_lambda_zero_is_td_residual(ppo_loss):
    """lam = 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after the last response token)."""
    rewards, values, mask = random_episode(1)
    advantages, _ = ppo_loss.compute_gae(rewards, values, gamma=0.9, lam=0.0, mask=mask)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(3, 1)], dim=1)
    td_residual = (rewards + 0.9 * next_values - values) * mask
    if is_close(advantages, (rewards + next_values - values) * mask):
        pytest.fail("the TD residual is not discounted: delta_t = r_t + gamma * V_{t+1} - V_t")
    assert_close(advantages, td_residual, "GAE with lam=0", "with lam=0, A_t is the one-step TD residual delta_t.")


@pytest.mark.points(2)
def test_gae_gamma_lambda_one_is_monte_carlo(ppo_loss):
    """gamma = lam = 1: A_t = sum_{k >= t} r_k - V_t, the Monte-Carlo return minus the value."""
    rewards, values, mask = random_episode(2)
    advantages, returns = ppo_loss.compute_gae(rewards, values, gamma=1.0, lam=1.0, mask=mask)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    assert_close(advantages, reward_to_go - values, "GAE with gamma=lam=1",
                 "with gamma = lam = 1, A_t = (sum of the rewards from t to the end) - V_t.")
    assert_close(returns, reward_to_go, "returns with gamma=lam=1", "returns = advantages + values = reward-to-go.")


@pytest.mark.points(3)
def test_gae_terminal_cut_and_padding(ppo_loss):
    """The 3-step episode padded to 6 tokens, with garbage in the padding: nothing changes, padding gets 0."""
    rewards = torch.tensor([EPISODE_REWARDS + [2.0, -1.0, 3.0]])
    values = torch.tensor([EPISODE_VALUES + [7.0, -3.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    advantages, returns = ppo_loss.compute_gae(rewards, values, gamma=0.9, lam=0.8, mask=mask)
    unpadded = ppo_loss.compute_gae(rewards[:, :3], values[:, :3], gamma=0.9, lam=0.8)
    if is_close(advantages[0, 2], 1.0 + 0.9 * 7.0 - 0.7):
        pytest.fail("no terminal cut: the last response token bootstrapped from the padding's value "
                    "(V after the last response token must be 0)")
    assert_close(advantages[:, :3], unpadded[0], "advantages of a padded episode vs the same episode unpadded",
                 "the padding's rewards and values leaked into the response tokens: zero them first (torch.where).")
    assert_close(advantages[0, :3], EPISODE_ADVANTAGES, "advantages of the 3-step episode",
                 "wrong even without padding: see test_gae_by_hand_three_steps.")
    assert_close(returns[0, :3], EPISODE_RETURNS, "returns of a padded episode", "returns = advantages + values.")
    assert not advantages[0, 3:].any(), f"padding advantages are {advantages[0, 3:].tolist()}, expected 0"
    assert not returns[0, 3:].any(), f"padding returns are {returns[0, 3:].tolist()}, expected 0 (use the masked values)"


@pytest.mark.points(1)
def test_gae_padding_may_hold_inf_and_nan(ppo_loss):
    """Padding values of inf and NaN (a critic's garbage past EOS) must not reach any response token."""
    rewards, values, mask = random_episode(3)
    clean = ppo_loss.compute_gae(rewards, values, 0.99, 0.95, mask)
    garbage = torch.tensor([float("inf"), float("nan"), -float("inf")]).repeat(3, 2)
    dirty = ppo_loss.compute_gae(torch.where(mask.bool(), rewards, garbage), torch.where(mask.bool(), values, garbage),
                                 0.99, 0.95, mask)
    for name, got, expected in zip(("advantages", "returns"), dirty, clean):
        assert_close(got, expected, f"{name} with inf/NaN padding",
                     "0 * inf is NaN: remove the padding with torch.where(mask, x, 0), not with a product.")


@pytest.mark.points(1)
def test_gae_float64_bool_mask_and_inputs_untouched(ppo_loss):
    rewards, values, mask = random_episode(4, dtype=torch.float64)
    values = values + 10 * (1 - mask)                     # non-zero padding
    originals = (rewards.clone(), values.clone())
    advantages, returns = ppo_loss.compute_gae(rewards, values, 0.95, 0.9, mask.bool())
    assert advantages.dtype == returns.dtype == torch.float64, f"float64 inputs gave {advantages.dtype} / {returns.dtype}"
    assert torch.equal(rewards, originals[0]) and torch.equal(values, originals[1]), "compute_gae modified its inputs in place"
    expected = ppo_loss.compute_gae(rewards, values, 0.95, 0.9, mask)
    assert_close(advantages, expected[0], "advantages with a bool mask", "a bool mask must act as the same float mask.")


# ---------------------------------------------------------------- PPOLoss

# Four tokens: ratios 1.3, 0.7, 1.1, 0.9 with advantages 1, -1, -2, 0.5 and eps 0.2:
#   -min(1.3, 1.2) = -1.2;  -min(-0.7, -0.8) = 0.8;  -min(-2.2, -2.2) = 2.2;  -min(0.45, 0.45) = -0.45
HAND_RATIOS = [1.3, 0.7, 1.1, 0.9]
HAND_ADVANTAGES = [1.0, -1.0, -2.0, 0.5]
HAND_POLICY_LOSS = (-1.2 + 0.8 + 2.2 - 0.45) / 4


def ppo_call(ppo_loss, config, logp, old, values, returns, advantages, entropy, mask=None, old_values=None):
    loss_fn = ppo_loss.PPOLoss(**config)
    return loss_fn, loss_fn(logp, old, values, returns, advantages, entropy, mask, old_values)


def hand_policy_inputs():
    old = torch.full((1, 4), -1.5)
    logp = old + torch.tensor([HAND_RATIOS]).log()
    return logp, old, torch.tensor([HAND_ADVANTAGES])


@pytest.mark.points(2)
def test_ppo_policy_loss_by_hand(ppo_loss):
    logp, old, advantages = hand_policy_inputs()
    zeros = torch.zeros(1, 4)
    _, loss = ppo_call(ppo_loss, {"value_loss_coef": 0.0, "entropy_coef": 0.0}, logp, old, zeros, zeros, advantages, zeros)
    if is_close(loss, -HAND_POLICY_LOSS):
        pytest.fail("the policy loss has the wrong sign: minimise -min(r A, clip(r) A)")
    if is_close(loss, (-1.3 + 0.7 + 2.2 - 0.45) / 4):
        pytest.fail("the ratio is not clipped, or max is taken instead of min: -min(r A, clip(r, 1-eps, 1+eps) A)")
    assert_close(loss, HAND_POLICY_LOSS, "PPO policy loss", "token mean of -min(r A, clip(r, 0.8, 1.2) A).")


@pytest.mark.points(2)
def test_ppo_clipped_gradient_vanishes_where_it_should(ppo_loss):
    """Zero gradient for (A > 0, r > 1 + eps) and (A < 0, r < 1 - eps), -A r / n elsewhere."""
    ratios = torch.tensor([[0.7, 1.0, 1.3, 0.7, 1.0, 1.3]])
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
    old = torch.full((1, 6), -2.0)
    logp = (old + ratios.log()).requires_grad_(True)
    zeros = torch.zeros(1, 6)
    _, loss = ppo_call(ppo_loss, {"value_loss_coef": 0.0, "entropy_coef": 0.0}, logp, old, zeros, zeros, advantages, zeros)
    loss.backward()
    cut = [False, False, True, True, False, False]
    for i in range(6):
        case = f"A={advantages[0, i].item():+.0f}, r={ratios[0, i].item():.1f}"
        if cut[i]:
            assert logp.grad[0, i].item() == 0.0, f"gradient at {case} must be exactly 0 (the clip stops the push)"
        else:
            assert_close(logp.grad[0, i], -advantages[0, i] * ratios[0, i] / 6, f"gradient at {case}",
                         "this token is not clipped: min(r A, clip(r) A) keeps r A (max instead of min?).")


@pytest.mark.points(2)
def test_ppo_value_loss_plain(ppo_loss):
    """value_loss = token mean of (V - R)^2 over the mask = (0.25 + 1 + 0) / 3; loss adds value_loss_coef times it."""
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    returns = torch.tensor([[1.5, 1.0, 3.0, -99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    zeros = torch.zeros(1, 4)
    loss_fn, loss = ppo_call(ppo_loss, {"value_loss_coef": 0.5, "entropy_coef": 0.0}, zeros, zeros, values, returns,
                             zeros, zeros, mask)
    if is_close(loss, 0.5 * (1.25 + 198**2) / 4):
        pytest.fail("the value loss counts the padding: take the mean over the response mask only")
    if is_close(loss, 0.25 * 1.25 / 3):
        pytest.fail("the value loss has an extra 1/2: the contract's value loss is mean((V - R)^2), weighted by value_loss_coef")
    if is_close(loss, 1.25 / 3):
        pytest.fail("value_loss_coef is not applied: loss = policy + value_loss_coef * value_loss - entropy_coef * entropy")
    assert_close(loss, 0.5 * 1.25 / 3, "PPO loss with only the value term", "value_loss_coef * mean over the mask of (V - R)^2.")
    assert_close(loss_fn.metrics["value_loss"], 1.25 / 3, "metrics['value_loss']", "the unweighted mean of (V - R)^2.")


@pytest.mark.points(2)
def test_ppo_value_loss_clipped(ppo_loss):
    """value_clip=0.2 around old_values: mean of max((V - R)^2, (V_old + clip(V - V_old) - R)^2) = (0.64 + 1.21 + 2.25) / 3."""
    old_values = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[1.5, 0.9, 1.5]], requires_grad=True)
    returns = torch.tensor([[2.0, 2.0, 0.0]])
    zeros = torch.zeros(1, 3)
    loss_fn, loss = ppo_call(ppo_loss, {"value_loss_coef": 1.0, "entropy_coef": 0.0, "value_clip": 0.2},
                             zeros, zeros, values, returns, zeros, zeros, None, old_values)
    value_loss = loss_fn.metrics["value_loss"]
    if is_close(value_loss, (0.25 + 1.21 + 2.25) / 3):
        pytest.fail("value_clip was ignored: with value_clip and old_values the value loss uses the clipped prediction too")
    if is_close(value_loss, (0.25 + 1.21 + 1.44) / 3):
        pytest.fail("the clipped value loss takes the min: it is the pessimistic max((V-R)^2, (V_clipped-R)^2)")
    assert_close(value_loss, 4.1 / 3, "clipped value loss", "max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2), token mean.")
    assert_close(loss, 4.1 / 3, "PPO loss with the clipped value term", "loss = value_loss_coef * value_loss here.")
    loss.backward()
    assert_close(values.grad, [[0.0, 2 * (0.9 - 2.0) / 3, 2 * 1.5 / 3]], "gradient of the clipped value loss wrt V",
                 "where the clipped term wins (token 0) the gradient is 0; elsewhere 2 (V - R) / n.")


@pytest.mark.points(1)
def test_ppo_entropy_is_a_bonus(ppo_loss):
    """loss = ... - entropy_coef * mean(entropy): more entropy, lower loss; d loss / d entropy = -coef / n."""
    entropy = torch.tensor([[0.5, 1.0, 2.0, 50.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    zeros = torch.zeros(1, 4)
    _, loss = ppo_call(ppo_loss, {"entropy_coef": 0.1}, zeros, zeros, zeros, zeros, zeros, entropy, mask)
    if is_close(loss, 0.1 * 3.5 / 3):
        pytest.fail("the entropy is penalised: it is a bonus, loss = ... - entropy_coef * mean(entropy)")
    assert_close(loss, -0.1 * 3.5 / 3, "PPO loss with only the entropy term", "-entropy_coef * token mean of the entropy.")
    loss.backward()
    assert_close(entropy.grad, [[-0.1 / 3] * 3 + [0.0]], "gradient wrt the entropy",
                 "-entropy_coef / (number of response tokens) on response tokens, 0 on padding.")


@pytest.mark.points(2)
def test_ppo_token_means_over_the_mask(ppo_loss):
    """Every term is a mean over all response tokens of the batch (not per sequence); padding holds garbage."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])     # lengths 3 and 1
    garbage = 1e3 * (1 - mask)
    values = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]]) + garbage
    returns = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) - garbage
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-3.0, 0.0, 0.0]]) + garbage
    entropy = torch.tensor([[1.0, 1.0, 1.0], [5.0, 0.0, 0.0]]) + garbage
    logp = torch.zeros(2, 3) + 0.01 * garbage                  # ratio 1 on response tokens, e^10 on padding
    loss_fn, loss = ppo_call(ppo_loss, {"value_loss_coef": 0.5, "entropy_coef": 0.1}, logp, torch.zeros(2, 3),
                             values, returns, advantages, entropy, mask)
    policy, value, ent = (-1 - 1 - 1 + 3) / 4, (1 + 1 + 1 + 4) / 4, (1 + 1 + 1 + 5) / 4
    if is_close(loss_fn.metrics["value_loss"], (1 + 4) / 2):
        pytest.fail("the value loss averages per sequence: PPO's terms are token means over the whole batch's mask")
    assert_close(loss_fn.metrics["policy_loss"], policy, "metrics['policy_loss'] over the mask", "a token mean over the mask.")
    assert_close(loss_fn.metrics["value_loss"], value, "metrics['value_loss'] over the mask", "a token mean over the mask.")
    assert_close(loss_fn.metrics["entropy"], ent, "metrics['entropy'] over the mask", "a token mean over the mask.")
    assert_close(loss, policy + 0.5 * value - 0.1 * ent, "PPO loss over the mask",
                 "the padding leaked in, or the terms are not token means over the mask.")


@pytest.mark.points(1)
def test_ppo_metrics(ppo_loss):
    logp, old, advantages = hand_policy_inputs()
    zeros = torch.zeros(1, 4)
    loss_fn, _ = ppo_call(ppo_loss, {}, logp, old, zeros, zeros, advantages, torch.ones(1, 4))
    for key in ("clip_fraction", "approx_kl", "value_loss", "entropy", "policy_loss"):
        assert key in loss_fn.metrics, f"metrics has no {key!r}"
        assert type(loss_fn.metrics[key]) is float, f"metrics[{key!r}] must be a float (.item())"
    assert_close(loss_fn.metrics["clip_fraction"], 0.5, "metrics['clip_fraction']",
                 "2 of 4 tokens are clipped (r=1.3 with A>0, r=0.7 with A<0).")
    approx_kl = sum((r - 1) - math.log(r) for r in HAND_RATIOS) / 4
    assert_close(loss_fn.metrics["approx_kl"], approx_kl, "metrics['approx_kl']", "mean of (r - 1) - log r.")
    assert_close(loss_fn.metrics["policy_loss"], HAND_POLICY_LOSS, "metrics['policy_loss']")
    assert_close(loss_fn.metrics["entropy"], 1.0, "metrics['entropy']")


@pytest.mark.points(1)
def test_ppo_extreme_log_ratios_are_finite(ppo_loss):
    logp = torch.tensor([[-60.0, -110.0, -60.0, -110.0]], requires_grad=True)
    old = torch.tensor([[-110.0, -60.0, -110.0, -60.0]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    zeros = torch.zeros(1, 4)
    _, loss = ppo_call(ppo_loss, {}, logp, old, zeros, zeros, advantages, zeros)
    loss.backward()
    assert torch.isfinite(loss), f"loss is {loss.item()} for log-ratios of +-50: use exp(logp - old_logp)"
    assert torch.isfinite(logp.grad).all(), "non-finite gradient for log-ratios of +-50"


@pytest.mark.points(1)
def test_ppo_float64_bool_mask_and_inputs_untouched(ppo_loss):
    generator = torch.Generator().manual_seed(7)
    tensors = [torch.randn(2, 5, generator=generator, dtype=torch.float64) for _ in range(7)]
    logp, old, values, returns, advantages, entropy, old_values = tensors
    mask = torch.arange(5) < torch.tensor([[5], [2]])
    originals = [t.clone() for t in tensors + [mask]]
    loss_fn = ppo_loss.PPOLoss(value_clip=0.3)
    loss = loss_fn(logp, old, values, returns, advantages, entropy, mask, old_values)
    assert loss.shape == () and loss.dtype == torch.float64, f"expected a float64 scalar, got {loss.dtype} {tuple(loss.shape)}"
    for before, after in zip(originals, tensors + [mask]):
        assert torch.equal(before, after), "PPOLoss modified an input in place"
    assert_close(loss, loss_fn(logp, old, values, returns, advantages, entropy, mask.double(), old_values),
                 "loss with a bool mask", "a bool mask must act as the same float mask.")


# ---------------------------------------------------------------- snapshots (seeded reference values)

@pytest.mark.points(2)
def test_snapshot_gae(ppo_loss):
    """compute_gae on a stored batch with garbage padding, for four (gamma, lam) pairs."""
    snap = load_snapshot("ppo_loss")["gae"]
    rewards, values, mask = tensor(snap["rewards"]), tensor(snap["values"]), tensor(snap["mask"])
    for case in snap["cases"]:
        advantages, returns = ppo_loss.compute_gae(rewards, values, case["gamma"], case["lam"], mask)
        label = f"snapshot compute_gae(gamma={case['gamma']}, lam={case['lam']})"
        assert_close(advantages, case["advantages"], f"{label} advantages")
        assert_close(returns, case["returns"], f"{label} returns")


def check_ppo_case(ppo_loss, name):
    snap = load_snapshot("ppo_loss")
    case = snap["ppo_cases"][name]
    inputs = {key: tensor(value) for key, value in snap["ppo_inputs"].items()}
    logp = inputs.pop("policy_logprobs").requires_grad_(True)
    values = inputs.pop("values").requires_grad_(True)
    loss_fn = ppo_loss.PPOLoss(**case["config"])
    loss = loss_fn(logp, inputs["old_policy_logprobs"], values, inputs["returns"], inputs["advantages"],
                   inputs["entropy"], inputs["response_mask"], inputs["old_values"])
    loss.backward()
    label = snapshot_label("PPOLoss", case["config"])
    assert_close(loss, case["loss"], f"{label} loss")
    assert_close(logp.grad, case["grad_policy"], f"{label} gradient wrt policy_logprobs")
    assert_close(values.grad, case["grad_values"], f"{label} gradient wrt values")
    assert_metrics(loss_fn.metrics, case["metrics"], label)


@pytest.mark.points(1)
def test_snapshot_ppo_loss(ppo_loss):
    """Default and custom coefficients on a stored masked batch."""
    check_ppo_case(ppo_loss, "default")
    check_ppo_case(ppo_loss, "coefficients")


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_snapshot_ppo_value_clip(ppo_loss):
    """value_clip=0.2 on the stored batch."""
    check_ppo_case(ppo_loss, "value_clip")
### END HIDDEN TESTS
