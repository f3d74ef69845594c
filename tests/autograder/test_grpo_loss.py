"""Graded tests of the GRPO loss exercise (exercises/grpo_loss.py).

Reference values: hand-computed cases from the lessons, properties, and the stored snapshot
snapshots/grpo_loss.json. The module under test comes from the `grpo_loss` fixture (--impl).
"""
import math

import pytest
import torch

from loss.names import LOSS_AGG_MODES
from tests.autograder.snapshots import assert_close, assert_metrics, is_close, load_snapshot, snapshot_label, tensor

LESSON_REWARDS = [[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]     # seed 000: two prompts, four samples each


def grad_of(loss_fn, logp, *args, **kwargs):
    """(loss, d loss / d logp) for a loss called as loss_fn(logp, *args)."""
    logp = logp.clone().requires_grad_(True)
    loss = loss_fn(logp, *args, **kwargs)
    loss.backward()
    return loss, logp.grad


# ---------------------------------------------------------------- group_advantages

@pytest.mark.points(1)
def test_group_advantages_lesson_example(grpo_loss):
    """Seed 000: rewards [1, 0, .5, .5 | 0, 0, 1, 1] give [.5, -.5, 0, 0 | -.5, -.5, .5, .5] without std."""
    rewards = torch.tensor(LESSON_REWARDS)
    advantages = grpo_loss.group_advantages(rewards, normalize_std=False)
    assert_close(advantages, [[0.5, -0.5, 0.0, 0.0], [-0.5, -0.5, 0.5, 0.5]], "advantages (normalize_std=False)",
                 "A_i = r_i - mean of the G rewards of the same prompt (mean over dim=1), no std division.")


@pytest.mark.points(1)
def test_group_advantages_unbiased_std(grpo_loss):
    """With normalize_std the lesson's groups become (r - mean) / (std + eps), std with G - 1."""
    rewards = torch.tensor(LESSON_REWARDS)
    advantages = grpo_loss.group_advantages(rewards, normalize_std=True, eps=1e-6)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if is_close(advantages, centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + 1e-6)):
        pytest.fail("advantages use the population std (divide by G): the contract uses the unbiased std (G - 1), "
                    "as torch.std, verl and TRL do")
    if is_close(advantages, centred):
        pytest.fail("normalize_std=True did not divide by the group std")
    expected = centred / (rewards.std(dim=1, keepdim=True) + 1e-6)   # +-1.2247 and +-0.8660
    assert_close(advantages, expected, "advantages (normalize_std=True)",
                 "A_i = (r_i - mean) / (std + eps) with mean and unbiased std over each group (dim=1).")


@pytest.mark.points(1)
def test_group_advantages_near_identical_rewards(grpo_loss):
    """Seed 000's warning: [1, 1, 1, 1.01] differ by 1%, yet std normalisation blows them up to +-1.5."""
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.01]], dtype=torch.float64)
    assert_close(grpo_loss.group_advantages(rewards, normalize_std=False), [[-0.0025, -0.0025, -0.0025, 0.0075]],
                 "Dr. GRPO advantages of [1, 1, 1, 1.01]", "without std the advantage is just r - mean.")
    std = 0.005   # unbiased std of [1, 1, 1, 1.01]: sqrt((3 * 0.0025^2 + 0.0075^2) / 3)
    expected = [[-0.0025 / (std + 1e-6)] * 3 + [0.0075 / (std + 1e-6)]]
    assert_close(grpo_loss.group_advantages(rewards), expected, "GRPO advantages of [1, 1, 1, 1.01]",
                 "(r - mean) / (std + eps), eps added to the std (not inside the square root), default eps=1e-6.")


@pytest.mark.points(1)
def test_group_advantages_zero_mean_per_group(grpo_loss):
    """Each group's advantages sum to 0, whatever the other groups hold."""
    generator = torch.Generator().manual_seed(1)
    rewards = torch.rand(6, 5, generator=generator, dtype=torch.float64) + torch.arange(6.0).unsqueeze(1)   # levels differ
    for normalize_std in (False, True):
        advantages = grpo_loss.group_advantages(rewards, normalize_std=normalize_std)
        assert advantages.shape == rewards.shape, f"advantages shape {tuple(advantages.shape)}, expected [B, G] = (6, 5)"
        assert_close(advantages.sum(dim=1), torch.zeros(6), f"per-group sum of advantages (normalize_std={normalize_std})",
                     "advantages not zero-mean per group: did you subtract the batch mean instead of the group mean?")
    assert_close(grpo_loss.group_advantages(rewards, normalize_std=True).std(dim=1), torch.ones(6),
                 "per-group std of the normalised advantages", "divide by each group's own std (dim=1).")


@pytest.mark.points(1)
def test_group_advantages_all_equal_rewards(grpo_loss):
    """A group whose rewards are all equal carries no signal: advantage exactly 0, never NaN."""
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3]])
    for normalize_std in (True, False):
        advantages = grpo_loss.group_advantages(rewards, normalize_std=normalize_std)
        assert torch.isfinite(advantages).all(), "NaN advantages for all-equal rewards: add eps to the std (std + eps)"
        assert_close(advantages[[0, 2]], torch.zeros(2, 4), "advantages of all-equal groups",
                     "equal rewards must give advantage 0 (compare each reward with its own group's mean).")


@pytest.mark.points(1)
def test_group_of_one_raises(grpo_loss):
    """G = 1 has no baseline: a clear ValueError, from the function and from the loss."""
    with pytest.raises(ValueError):
        grpo_loss.group_advantages(torch.tensor([[1.0], [0.0]]))
    with pytest.raises(ValueError):
        grpo_loss.GRPOLoss()(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]), torch.zeros(2, 1))


# ---------------------------------------------------------------- kl_estimate

@pytest.mark.points(1)
def test_kl_estimators(grpo_loss):
    """k1 = logp - ref, k2 = (logp - ref)^2 / 2, k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's estimators)."""
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    ref = torch.tensor([-1.5, -1.0, -0.5, -0.2])
    diff = logp - ref                                  # [0.5, -1, 0, -2.8]
    assert_close(grpo_loss.kl_estimate(logp, ref, "k1"), diff, "k1", "k1 = logp - ref_logp.")
    assert_close(grpo_loss.kl_estimate(logp, ref, "k2"), diff**2 / 2, "k2", "k2 = (logp - ref_logp)^2 / 2.")
    k3 = grpo_loss.kl_estimate(logp, ref, "k3")
    if is_close(k3, torch.exp(diff) - diff - 1):
        pytest.fail("k3 has its log-ratio the wrong way round: k3 = exp(ref - logp) - (ref - logp) - 1")
    if is_close(k3, diff):
        pytest.fail("kind='k3' returned k1 = logp - ref_logp")
    assert_close(k3, torch.exp(-diff) + diff - 1, "k3", "k3 = exp(ref - logp) - (ref - logp) - 1.")
    assert_close(grpo_loss.kl_estimate(logp, ref), k3, "kl_estimate default", "the default kind is 'k3'.")


@pytest.mark.points(1)
def test_k3_nonnegative_and_zero_at_equality(grpo_loss):
    generator = torch.Generator().manual_seed(2)
    logp = -3 * torch.rand(4, 50, generator=generator)
    ref = -3 * torch.rand(4, 50, generator=generator)
    k3 = grpo_loss.kl_estimate(logp, ref, "k3")
    assert k3.shape == logp.shape, f"k3 shape {tuple(k3.shape)}, expected {tuple(logp.shape)} (one estimate per token)"
    assert (k3 >= -1e-6).all(), f"k3 is negative ({k3.min().item():.4g}): k3 = exp(x) - x - 1 >= 0 with x = ref - logp"
    assert torch.equal(grpo_loss.kl_estimate(logp, logp, "k3"), torch.zeros_like(logp)), "k3 must be exactly 0 where logp == ref"


# ---------------------------------------------------------------- aggregate_loss

# Rows of lengths 3, 1, 0 (empty) and 2; padding holds garbage that must not count.
AGG_LOSS = [[1.0, 2.0, 3.0, 99.0], [4.0, -50.0, 7.0, 7.0], [8.0, 8.0, 8.0, 8.0], [-1.0, 5.0, 30.0, 30.0]]
AGG_MASK = [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]


def aggregate(grpo_loss, mode, mask=AGG_MASK, **kwargs):
    return grpo_loss.aggregate_loss(torch.tensor(AGG_LOSS), torch.tensor(mask, dtype=torch.float32), mode, **kwargs)


@pytest.mark.points(1)
def test_aggregate_token_mean(grpo_loss):
    """token-mean = sum(L M) / sum(M) = (6 + 4 + 4) / 6."""
    result = aggregate(grpo_loss, "token-mean")
    if is_close(result, sum(map(sum, AGG_LOSS)) / 16):
        pytest.fail("token-mean averaged every entry: the mask was ignored (padding counted)")
    assert_close(result, 14 / 6, "token-mean", "sum of the masked losses / number of response tokens.")


@pytest.mark.points(2)
def test_aggregate_seq_mean_token_mean(grpo_loss):
    """GRPO's 1/|o_i| averaging: row means 2, 4, 2 over the 3 non-empty rows; the empty row is left out."""
    result = aggregate(grpo_loss, "seq-mean-token-mean")
    if is_close(result, 14 / 6):
        pytest.fail("seq-mean-token-mean gave the token-mean: average each row over its own tokens first, then the rows")
    if is_close(result, 8 / 4):
        pytest.fail("seq-mean-token-mean counted the empty row: average over the rows with at least one token")
    assert_close(result, 8 / 3, "seq-mean-token-mean", "mean over non-empty rows of (row sum / row length).")


@pytest.mark.points(1)
def test_aggregate_seq_mean_token_sum(grpo_loss):
    """Row sums 6, 4, 4 over the 3 non-empty rows."""
    result = aggregate(grpo_loss, "seq-mean-token-sum")
    if is_close(result, 14 / 4):
        pytest.fail("seq-mean-token-sum counted the empty row: average over the rows with at least one token")
    assert_close(result, 14 / 3, "seq-mean-token-sum", "mean over non-empty rows of the masked row sums.")


@pytest.mark.points(1)
def test_aggregate_seq_mean_token_sum_norm(grpo_loss):
    """Dr. GRPO: sum(L M) / (non-empty rows * max_len), max_len = T = 4 unless given."""
    result = aggregate(grpo_loss, "seq-mean-token-sum-norm")
    if is_close(result, 14 / (3 * 3)):
        pytest.fail("seq-mean-token-sum-norm divided by the longest response in the batch: the divisor is max_len "
                    "(T, the width of the matrix, by default), a constant")
    assert_close(result, 14 / (3 * 4), "seq-mean-token-sum-norm", "sum(L M) / (number of non-empty rows * T).")
    assert_close(aggregate(grpo_loss, "seq-mean-token-sum-norm", max_len=10), 14 / 30,
                 "seq-mean-token-sum-norm with max_len=10", "use the max_len argument when it is given.")


@pytest.mark.points(1)
def test_aggregate_all_zero_mask(grpo_loss):
    """No response token at all: every mode gives 0 (not NaN), and a zero gradient."""
    for mode in LOSS_AGG_MODES:
        loss_mat = torch.tensor(AGG_LOSS, requires_grad=True)
        result = grpo_loss.aggregate_loss(loss_mat, torch.zeros(4, 4), mode)
        assert torch.isfinite(result), f"{mode} of an all-zero mask is {result.item()}: guard the division (0 / 0)"
        assert result.item() == 0.0, f"{mode} of an all-zero mask is {result.item()}, expected 0"
        if result.requires_grad:   # a constant 0 is fine too
            result.backward()
            assert torch.isfinite(loss_mat.grad).all() and not loss_mat.grad.any(), (
                f"{mode}: the gradient through an empty mask must be 0, not NaN")


@pytest.mark.points(1)
def test_aggregate_bool_mask_and_float64(grpo_loss):
    """A bool mask counts like a float one; float64 stays float64; the result is a scalar."""
    loss_mat = torch.tensor(AGG_LOSS, dtype=torch.float64)
    for mode, expected in (("token-mean", 14 / 6), ("seq-mean-token-mean", 8 / 3),
                           ("seq-mean-token-sum", 14 / 3), ("seq-mean-token-sum-norm", 14 / 12)):
        result = grpo_loss.aggregate_loss(loss_mat, torch.tensor(AGG_MASK, dtype=torch.bool), mode)
        assert result.shape == (), f"{mode}: expected a scalar, got shape {tuple(result.shape)}"
        assert result.dtype == torch.float64, f"{mode}: float64 input gave {result.dtype}"
        float_mask = grpo_loss.aggregate_loss(loss_mat, torch.tensor(AGG_MASK, dtype=torch.float64), mode)
        assert_close(result, float_mask, f"{mode} with a bool mask", "a bool mask must count like the same float mask.")
        assert_close(result, expected, f"{mode} in float64", f"wrong with a float mask too: see the test of {mode}.")


# ---------------------------------------------------------------- GRPOLoss

# Seed 000's loss example: ratios e^.5, e^-.5, e^.5, 1 with advantages .5, -.5, 0, 0 (rewards [1, 0, .5, .5]).
LESSON_NEW = [[-10.0, -12.0, -11.0, -11.5]]
LESSON_OLD = [[-10.5, -11.5, -11.5, -11.5]]


@pytest.mark.points(1)
def test_grpo_loss_lesson_example(grpo_loss):
    """-mean(min(r A, clip(r) A)) = -(0.5 * 1.2 - 0.5 * 0.8 + 0 + 0) / 4 = -0.05."""
    loss_fn = grpo_loss.GRPOLoss(clip_epsilon=0.2, kl_beta=0.0, normalize_std=False)
    loss = loss_fn(torch.tensor(LESSON_NEW), torch.tensor(LESSON_OLD), torch.tensor([[1.0, 0.0, 0.5, 0.5]]), None)
    if is_close(loss, 0.05):
        pytest.fail("the loss has the wrong sign: minimise -min(r A, clip(r) A)")
    if is_close(loss, -(0.5 * math.exp(0.5) - 0.5 * math.exp(-0.5)) / 4):
        pytest.fail("the clip had no effect: clip the ratio to [1 - eps, 1 + eps] in the second term and take the "
                    "pessimistic min(r A, clip(r) A), not the max")
    assert_close(loss, -0.05, "the lesson's GRPO loss", "-mean_i min(r_i A_i, clip(r_i, 0.8, 1.2) A_i).")


@pytest.mark.points(2)
def test_clipped_gradient_vanishes_where_it_should(grpo_loss):
    """d loss / d logp is exactly 0 for (A > 0, r > 1 + eps) and (A < 0, r < 1 - eps), and -A r / N elsewhere."""
    ratios = torch.tensor([0.7, 1.0, 1.3, 0.7, 1.0, 1.3])
    advantages = torch.tensor([0.5, 0.5, 0.5, -0.5, -0.5, -0.5])      # from rewards [1, 1, 1, 0, 0, 0]
    old = torch.full((1, 6), -2.0)
    loss_fn = grpo_loss.GRPOLoss(clip_epsilon=0.2, kl_beta=0.0, normalize_std=False)
    _, grad = grad_of(loss_fn, old + ratios.log(), old, torch.tensor([[1.0, 1, 1, 0, 0, 0]]))
    cut = torch.tensor([False, False, True, True, False, False])
    for i in range(6):
        case = f"A={advantages[i].item():+.1f}, r={ratios[i].item():.1f}"
        if cut[i]:
            assert grad[0, i].item() == 0.0, (
                f"gradient at {case} is {grad[0, i].item():.4g}, expected exactly 0: the clip must stop the push "
                f"(no clipping, or max instead of min?)")
        else:
            assert grad[0, i].item() != 0.0, (
                f"gradient at {case} is 0 but this sample is not clipped: min(r A, clip(r) A) keeps r A here "
                f"(max instead of min, or clipping both sides regardless of the sign of A?)")
            assert_close(grad[0, i], -advantages[i] * ratios[i] / 6, f"gradient at {case}",
                         "the unclipped term -r A / N has gradient -A r / N with respect to logp.")


@pytest.mark.points(1)
def test_clip_epsilon_high(grpo_loss):
    """DAPO's clip-higher raises only the upper clip: r = 1.25 with A > 0 still pushes at eps_high = 0.28."""
    old = torch.full((1, 4), -1.0)
    logp = old + torch.tensor([[1.25, 1.3, 0.75, 1.25]]).log()
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]])                  # advantages .5, .5, -.5, -.5
    loss_fn = grpo_loss.GRPOLoss(clip_epsilon=0.2, clip_epsilon_high=0.28, kl_beta=0.0, normalize_std=False)
    loss, grad = grad_of(loss_fn, logp, old, rewards)
    expected = (-0.5 * 1.25 - 0.5 * 1.28 + 0.5 * 0.8 + 0.5 * 1.25) / 4
    if is_close(loss, (-0.5 * 1.2 - 0.5 * 1.2 + 0.5 * 0.8 + 0.5 * 1.25) / 4):
        pytest.fail("clip_epsilon_high was ignored: the upper clip is 1 + clip_epsilon_high")
    if is_close(loss, (-0.5 * 1.25 - 0.5 * 1.28 + 0.5 * 0.75 + 0.5 * 1.25) / 4):
        pytest.fail("clip_epsilon_high widened the lower clip too: the lower clip stays 1 - clip_epsilon")
    assert_close(loss, expected, "loss with clip_epsilon_high=0.28", "clip(r, 1 - clip_epsilon, 1 + clip_epsilon_high).")
    assert grad[0, 0] != 0 and grad[0, 1] == 0 and grad[0, 2] == 0, (
        "with eps_high=0.28 the gradient must flow at r=1.25 (A>0) and stop at r=1.3 (A>0) and r=0.75 (A<0)")
    default_loss = grpo_loss.GRPOLoss(clip_epsilon=0.2, kl_beta=0.0, normalize_std=False)(logp, old, rewards)
    assert_close(default_loss, (-0.5 * 1.2 - 0.5 * 1.2 + 0.5 * 0.8 + 0.5 * 1.25) / 4, "loss with clip_epsilon_high=None",
                 "clip_epsilon_high=None means the upper clip is 1 + clip_epsilon.")


@pytest.mark.points(2)
def test_kl_term_present_and_absent(grpo_loss):
    """loss = policy part + kl_beta * mean(k3); no KL with kl_beta=0 or reference_logprobs=None."""
    generator = torch.Generator().manual_seed(3)
    logp = -2 * torch.rand(2, 4, generator=generator) - 0.1
    old = logp + 0.05 * torch.randn(2, 4, generator=generator)
    ref = logp + 0.5 * torch.randn(2, 4, generator=generator)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.9, 0.1]])
    policy_only = grpo_loss.GRPOLoss(kl_beta=0.0)(logp, old, rewards, ref)
    with_kl = grpo_loss.GRPOLoss(kl_beta=0.1)(logp, old, rewards, ref)
    without_ref = grpo_loss.GRPOLoss(kl_beta=0.1)(logp, old, rewards, None)
    diff = ref - logp
    k3_mean = (torch.exp(diff) - diff - 1).mean()
    assert_close(without_ref, policy_only, "loss with reference_logprobs=None",
                 "no reference means no KL term (and kl_beta=0 means none either).")
    kl_part = with_kl - policy_only
    if is_close(kl_part, 0.0):
        pytest.fail("the KL term is missing: add kl_beta * KL(pi_theta || pi_ref) to each token's loss")
    if is_close(kl_part, 0.1 * (logp - ref).mean()):
        pytest.fail("the KL term uses k1 = logp - ref: GRPO's default is k3 = exp(ref - logp) - (ref - logp) - 1")
    if is_close(kl_part, -0.1 * k3_mean):
        pytest.fail("the KL term is subtracted: the loss adds + kl_beta * KL")
    assert_close(kl_part, 0.1 * k3_mean, "KL part of the loss (kl_beta=0.1)", "kl_beta * mean of k3 over the tokens.")


@pytest.mark.points(1)
def test_metrics(grpo_loss):
    """After a call, metrics holds floats: clip_fraction, kl, ratio and advantage statistics."""
    loss_fn = grpo_loss.GRPOLoss(kl_beta=0.1, normalize_std=False)
    ref = torch.tensor([[-10.0, -12.0, -11.0, -11.0]])
    loss_fn(torch.tensor(LESSON_NEW), torch.tensor(LESSON_OLD), torch.tensor([[1.0, 0.0, 0.5, 0.5]]), ref)
    metrics = loss_fn.metrics
    for key in ("clip_fraction", "kl", "ratio_mean", "ratio_max", "advantage_mean", "advantage_std"):
        assert key in metrics, f"metrics has no {key!r}"
        assert type(metrics[key]) is float, f"metrics[{key!r}] is {type(metrics[key]).__name__}, expected a float (.item())"
    assert_close(metrics["clip_fraction"], 0.5, "metrics['clip_fraction']",
                 "2 of the 4 samples are clipped (r=e^.5 with A>0 and r=e^-.5 with A<0).")
    assert_close(metrics["kl"], (math.exp(0.5) - 0.5 - 1) / 4, "metrics['kl']", "the mean k3 over the response tokens.")
    assert_close(metrics["ratio_max"], math.exp(0.5), "metrics['ratio_max']", "the largest ratio over the response tokens.")
    assert_close(metrics["advantage_mean"], 0.0, "metrics['advantage_mean']", "group advantages have mean 0.")


@pytest.mark.points(1)
def test_sequence_and_token_level_inputs(grpo_loss):
    """[B, G] inputs: one ratio per sequence. [B, G, T] inputs: one ratio per token, A broadcast over tokens."""
    loss_fn = grpo_loss.GRPOLoss(kl_beta=0.0, normalize_std=False)
    rewards = torch.tensor([[1.0, 0.0]])                          # advantages +.5, -.5
    seq_loss = loss_fn(torch.tensor([[-2.0, -3.0]]), torch.tensor([[-2.1, -2.9]]), rewards, None)
    r1, r2 = math.exp(0.1), math.exp(-0.1)
    assert_close(seq_loss, -(0.5 * r1 - 0.5 * r2) / 2, "loss of [B, G] sequence logprobs", "-mean_i min(r_i A_i, clip A_i).")
    # Token level: sequence 0 has 2 tokens (ratios e^.1 and e^.3), sequence 1 has 1 token (ratio e^-.1) + padding.
    logp = torch.tensor([[[-1.0, -1.0], [-1.0, 5.0]]])
    old = torch.tensor([[[-1.1, -1.3], [-0.9, -7.0]]])
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    token_loss = loss_fn(logp, old, rewards, None, mask)
    seq0 = -(0.5 * math.exp(0.1) + 0.5 * 1.2) / 2                # second token clipped at 1.2
    seq1 = 0.5 * math.exp(-0.1)
    if is_close(token_loss, -(0.5 * 1.2 - 0.5 * math.exp(-0.1)) / 2):
        pytest.fail("[B, G, T] inputs were summed into one ratio per sequence: the ratio is per token")
    assert_close(token_loss, (seq0 + seq1) / 2, "loss of [B, G, T] token logprobs",
                 "per-token ratio, each sequence's advantage on all its tokens, mean per sequence then over sequences.")


@pytest.mark.points(1)
def test_padding_is_ignored(grpo_loss):
    """Whatever the padding holds, the loss is the same and the padding gets no gradient."""
    generator = torch.Generator().manual_seed(4)
    B, G, T = 2, 3, 5
    lengths = torch.tensor([[5, 2, 3], [1, 4, 5]])
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()
    logp = -2 * torch.rand(B, G, T, generator=generator) - 0.1
    old = logp + 0.2 * torch.randn(B, G, T, generator=generator)
    ref = logp + 0.2 * torch.randn(B, G, T, generator=generator)
    rewards = torch.rand(B, G, generator=generator)
    garbage = torch.randn(B, G, T, generator=generator) * 5

    def padded(x, sign=1.0):
        return torch.where(mask.bool(), x, sign * garbage)

    for mode in ("seq-mean-token-mean", "token-mean"):
        loss_fn = grpo_loss.GRPOLoss(loss_agg_mode=mode)
        clean, clean_grad = grad_of(loss_fn, logp, old, rewards, ref, mask)
        dirty, dirty_grad = grad_of(loss_fn, padded(logp), padded(old), rewards, padded(ref, -1.0), mask)
        assert_close(dirty, clean, f"loss ({mode}) with garbage in the padding",
                     "the padding changed the loss: the mask was ignored somewhere.")
        assert not dirty_grad[~mask.bool()].any(), f"{mode}: padding tokens got a gradient (mask the per-token loss)"
        assert_close(dirty_grad, clean_grad, f"gradient ({mode}) with garbage in the padding", "mask every token-level term.")


@pytest.mark.points(1)
def test_all_equal_rewards_no_policy_gradient(grpo_loss):
    """All-equal rewards: advantage 0, so the only gradient left is the KL term's."""
    generator = torch.Generator().manual_seed(5)
    logp = -2 * torch.rand(2, 4, generator=generator) - 0.1
    old = logp + 0.3 * torch.randn(2, 4, generator=generator)
    ref = logp + 0.3 * torch.randn(2, 4, generator=generator)
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    loss, grad = grad_of(grpo_loss.GRPOLoss(kl_beta=0.0), logp, old, rewards, ref)
    assert torch.isfinite(loss), "NaN loss for all-equal rewards: add eps to the std"
    assert not grad.any(), "all-equal rewards gave a policy gradient: their advantages must be 0 (group baseline)"
    _, grad = grad_of(grpo_loss.GRPOLoss(kl_beta=0.1), logp, old, rewards, ref)
    kl_grad = 0.1 * (1 - torch.exp(ref - logp)) / 8          # d/dlogp of kl_beta * mean(k3)
    assert_close(grad, kl_grad, "gradient with all-equal rewards and kl_beta=0.1", "only the k3 KL term should push.")


@pytest.mark.points(1)
def test_extreme_log_ratios_are_finite(grpo_loss):
    """Log-ratios of +-50 (long sequences): finite loss and gradient. Compute the ratio as exp(logp - old_logp)."""
    logp = torch.tensor([[-60.0, -110.0, -60.0, -110.0]])
    old = torch.tensor([[-110.0, -60.0, -110.0, -60.0]])
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    loss, grad = grad_of(grpo_loss.GRPOLoss(), logp, old, rewards, old)
    assert torch.isfinite(loss), f"loss is {loss.item()} for log-ratios of +-50: exp(logp) / exp(old_logp) underflows, use exp(logp - old_logp)"
    assert torch.isfinite(grad).all(), "non-finite gradient for log-ratios of +-50"


@pytest.mark.points(1)
def test_float64_bool_mask_and_inputs_untouched(grpo_loss):
    """float64 in, float64 scalar out; bool masks accepted; no input modified in place."""
    generator = torch.Generator().manual_seed(6)
    logp = -torch.rand(2, 3, 4, generator=generator, dtype=torch.float64)
    old = logp + 0.1 * torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    ref = logp - 0.1
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.5, 0.2, 0.1]], dtype=torch.float64)
    mask = torch.arange(4) < torch.tensor([[4, 2, 1], [3, 4, 2]]).unsqueeze(-1)
    originals = [t.clone() for t in (logp, old, ref, rewards, mask)]
    loss_fn = grpo_loss.GRPOLoss()
    loss = loss_fn(logp, old, rewards, ref, mask)
    assert loss.shape == (), f"the loss must be a scalar, got shape {tuple(loss.shape)}"
    assert loss.dtype == torch.float64, f"float64 inputs gave a {loss.dtype} loss"
    for name, before, after in zip(("policy_logprobs", "old_policy_logprobs", "reference_logprobs", "rewards",
                                    "response_mask"), originals, (logp, old, ref, rewards, mask)):
        assert torch.equal(before, after), f"{name} was modified in place"
    float_loss = loss_fn(logp, old, rewards, ref, mask.double())
    assert_close(loss, float_loss, "loss with a bool mask", "a bool mask must count like the same float mask.")


# ---------------------------------------------------------------- advantages given by a trainer

ADV_NEW = [[[-1.0, -1.0, -2.0], [-1.0, -2.0, -1.5]]]            # B=1, G=2, T=3
ADV_OLD = [[[-1.1, -0.8, -2.0], [-1.0, -1.9, -9.0]]]            # ratios e^.1, e^-.2, 1 | 1, e^-.1, (padding)
ADV_MASK = [[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]]


def clipped_term(ratio, advantage, eps=0.2):
    return -min(ratio * advantage, min(max(ratio, 1 - eps), 1 + eps) * advantage)


@pytest.mark.points(2)
def test_advantages_used_as_given(grpo_loss):
    """advantages= [B, G]: used exactly as given, never centred or divided by a std (a trainer's estimator may
    give non-centred advantages, e.g. pass@k's best-only or REINFORCE++'s batch-whitened ones)."""
    loss_fn = grpo_loss.GRPOLoss(clip_epsilon=0.2, kl_beta=0.0)
    advantages = torch.tensor([[1.0, 0.5]])                       # both positive: centring would change them
    loss = loss_fn(torch.tensor(ADV_NEW), torch.tensor(ADV_OLD), advantages=advantages,
                   response_mask=torch.tensor(ADV_MASK))
    e = math.exp
    seq0 = (clipped_term(e(0.1), 1.0) + clipped_term(e(-0.2), 1.0) + clipped_term(1.0, 1.0)) / 3
    seq1 = (clipped_term(1.0, 0.5) + clipped_term(e(-0.1), 0.5)) / 2
    centred = ((clipped_term(e(0.1), 0.25) + clipped_term(e(-0.2), 0.25) + clipped_term(1.0, 0.25)) / 3
               + (clipped_term(1.0, -0.25) + clipped_term(e(-0.1), -0.25)) / 2) / 2
    if is_close(loss, centred):
        pytest.fail("advantages= were centred in their group: use the given advantages exactly as they are")
    assert_close(loss, (seq0 + seq1) / 2, "loss with advantages=[[1.0, 0.5]]",
                 "with advantages= skip the group step: A is given (only reshape it to broadcast over the tokens).")


@pytest.mark.points(1)
def test_token_level_advantages(grpo_loss):
    """advantages= [B, G, T]: one advantage per token, each multiplying its own token's ratio."""
    loss_fn = grpo_loss.GRPOLoss(clip_epsilon=0.2, kl_beta=0.0, loss_agg_mode="token-mean")
    advantages = torch.tensor([[[1.0, -2.0, 0.5], [0.0, 3.0, 99.0]]])   # 99 sits on padding
    loss = loss_fn(torch.tensor(ADV_NEW), torch.tensor(ADV_OLD), advantages=advantages,
                   response_mask=torch.tensor(ADV_MASK))
    e = math.exp
    expected = (clipped_term(e(0.1), 1.0) + clipped_term(e(-0.2), -2.0) + clipped_term(1.0, 0.5)
                + clipped_term(1.0, 0.0) + clipped_term(e(-0.1), 3.0)) / 5
    assert_close(loss, expected, "token-mean loss with [B, G, T] advantages",
                 "token-level advantages are used per token as given: do not average them per sequence.")


GSPO_NEW = [[[-1.0, -2.0, -0.5, 7.0], [-1.0, -1.0, 3.0, 3.0]]]       # B=1, G=2, T=4; padding holds garbage
GSPO_OLD = [[[-1.3, -1.9, -0.8, -9.0], [-0.9, -1.1, -8.0, 8.0]]]
GSPO_MASK = [[[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]]


@pytest.mark.points(2)
def test_gspo_sequence_ratio(grpo_loss):
    """GSPO: every token of a completion shares s = exp(mean over its RESPONSE tokens of log(pi_theta / pi_old)).
    Sequence 0: mean(.3, -.1, .3) = 1/6 -> s = e^(1/6); sequence 1: mean(-.1, .1) = 0 -> s = 1."""
    loss_fn = grpo_loss.GRPOLoss(clip_epsilon=0.2, kl_beta=0.0, importance_sampling_level="sequence")
    advantages = torch.tensor([[1.0, -1.0]])
    loss = loss_fn(torch.tensor(GSPO_NEW), torch.tensor(GSPO_OLD), advantages=advantages,
                   response_mask=torch.tensor(GSPO_MASK))
    e = math.exp
    expected = (clipped_term(e(1 / 6), 1.0) + clipped_term(1.0, -1.0)) / 2
    token_level = ((clipped_term(e(0.3), 1) + clipped_term(e(-0.1), 1) + clipped_term(e(0.3), 1)) / 3
                   + (clipped_term(e(-0.1), -1) + clipped_term(e(0.1), -1)) / 2) / 2
    over_padding = (clipped_term(e((0.3 - 0.1 + 0.3 + 16.0) / 4), 1.0) + clipped_term(e((0.0 + 11.0 - 5.0) / 4), -1.0)) / 2
    if is_close(loss, token_level):
        pytest.fail("importance_sampling_level='sequence' was ignored: the ratio is still one per token")
    if is_close(loss, over_padding):
        pytest.fail("the sequence ratio averaged the padding in: take the mean log-ratio over the response tokens "
                    "only (a masked mean)")
    assert_close(loss, expected, "GSPO loss (importance_sampling_level='sequence')",
                 "s_i = exp(masked mean over the response tokens of logp - old_logp), the same for all tokens of i.")


# ---------------------------------------------------------------- snapshots (seeded reference values)

@pytest.mark.points(1)
def test_snapshot_functions(grpo_loss):
    """group_advantages, kl_estimate and aggregate_loss on the stored seeded inputs."""
    snap = load_snapshot("grpo_loss")
    adv = snap["group_advantages"]
    rewards = tensor(adv["rewards"])
    assert_close(grpo_loss.group_advantages(rewards), adv["with_std"], "snapshot group_advantages (normalize_std=True)")
    assert_close(grpo_loss.group_advantages(rewards, normalize_std=False), adv["without_std"],
                 "snapshot group_advantages (normalize_std=False)")
    kl = snap["kl_estimate"]
    for kind in ("k1", "k2", "k3"):
        assert_close(grpo_loss.kl_estimate(tensor(kl["logp"]), tensor(kl["ref_logp"]), kind), kl[kind], f"snapshot {kind}")
    agg = snap["aggregate_loss"]
    for mode in LOSS_AGG_MODES:
        assert_close(grpo_loss.aggregate_loss(tensor(agg["loss_mat"]), tensor(agg["mask"]), mode), agg[mode],
                     f"snapshot aggregate_loss {mode}", "check how this mode treats padding and empty rows.")
    assert_close(grpo_loss.aggregate_loss(tensor(agg["loss_mat"]), tensor(agg["mask"]), "seq-mean-token-sum-norm",
                                          agg["max_len"]),
                 agg["seq-mean-token-sum-norm, max_len=10"], "snapshot aggregate_loss seq-mean-token-sum-norm, max_len=10")


def check_grpo_case(grpo_loss, name):
    snap = load_snapshot("grpo_loss")
    case = snap["grpo_cases"][name]
    inputs = {key: tensor(value) for key, value in case.get("inputs", snap["grpo_inputs"]).items()}
    loss_fn = grpo_loss.GRPOLoss(**case["config"])
    loss, grad = grad_of(loss_fn, inputs["policy_logprobs"], inputs["old_policy_logprobs"], inputs["rewards"],
                         inputs["reference_logprobs"], inputs.get("response_mask"))
    label = snapshot_label("GRPOLoss", case["config"])
    assert_close(loss, case["loss"], f"{label} loss")
    assert_close(grad, case["grad"], f"{label} gradient wrt policy_logprobs")
    return loss_fn.metrics, case["metrics"], label


@pytest.mark.points(1)
def test_snapshot_grpo_default(grpo_loss):
    """The original GRPO (std-normalised, seq-mean-token-mean, k3 KL with beta 0.1) on a masked batch."""
    check_grpo_case(grpo_loss, "default")


@pytest.mark.points(2)
def test_snapshot_variants(grpo_loss):
    """Dr. GRPO (no std, seq-mean-token-sum-norm), DAPO (clip-higher, token-mean, no KL), k1 and k2 KL."""
    for name in ("dr_grpo", "dapo", "k1_token_sum", "k2_small_clip"):
        check_grpo_case(grpo_loss, name)


@pytest.mark.points(1)
def test_snapshot_sequence_level(grpo_loss):
    """[B, G] sequence logprobs, default settings."""
    check_grpo_case(grpo_loss, "sequence_level")


@pytest.mark.points(1)
def test_snapshot_metrics(grpo_loss):
    """metrics after the stored cases: clip_fraction, kl and ratio_mean over the response tokens only."""
    for name in ("default", "dapo", "k2_small_clip"):
        metrics, expected, label = check_grpo_case(grpo_loss, name)
        assert_metrics(metrics, expected, label)


### BEGIN HIDDEN TESTS
@pytest.mark.points(1)
def test_snapshot_gspo(grpo_loss):
    """GSPO: importance_sampling_level="sequence", one ratio exp(mean token log-ratio) per completion."""
    check_grpo_case(grpo_loss, "gspo")
### END HIDDEN TESTS
