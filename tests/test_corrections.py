"""loss/corrections.py and the advantage estimators added for the menu (reinforce_plus_plus_baseline, opo, gpg):
against verl 0.9.1's rollout_corr_helper and core_algos, TRL 1.16.0's GRPOTrainer, and by hand."""
import math

import numpy as np
import pytest
import torch

from loss.advantages import ADVANTAGE_ESTIMATORS, outcome_token_rewards
from loss.corrections import (ROLLOUT_CORRECTIONS, ROLLOUT_RS_OPTIONS, TRL_MODES, correction_weights,
                              high_entropy_mask, mask_truncated_completions, mismatch_metrics, rollout_is_weights,
                              rollout_rejection_mask, truncated_rows, vllm_importance_sampling_ratio)
from loss.policy_losses import POLICY_LOSSES

from .test_policy_losses import (VERL_VERSION, _library, assert_same, loss_and_grad, make_inputs,  # noqa: F401
                                 trl_compute_loss, trl_grpo, verl_algos)  # the fixtures too


@pytest.fixture(scope="module")
def verl_corr():
    return _library("verl.trainer.ppo.rollout_corr_helper", "verl", VERL_VERSION)



def sampler_and_trainer(seed=0, lengths=(9, 4, 1, 7, 9, 6), width=9, scale=0.3):
    """log mu (the sampler's) and log pi_old (the trainer's) that differ by ~`scale` per token, and the mask."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
    trainer = -2.0 * torch.rand(len(lengths), width, generator=g) - 0.01
    sampler = (trainer + scale * torch.randn(len(lengths), width, generator=g)).clamp(max=-0.001)
    return trainer, sampler, mask


# ---------------------------------------------------------------------------------------------- IS weights vs verl
@pytest.mark.parametrize("batch_normalize", [False, True])
@pytest.mark.parametrize("threshold", [2.0, 1.2, "0.5_2.0", "0.8_1.5"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rollout_is_weights_match_verl(verl_corr, level, threshold, batch_normalize):
    # smaller per-token gaps at the sequence level, where they add up (verl 0.9.1 raises ZeroDivisionError in its
    # metrics when IcePop drops every row)
    trainer, sampler, mask = sampler_and_trainer(scale=0.3 if level == "token" else 0.1)
    ours = rollout_is_weights(trainer, sampler, mask, level, threshold, batch_normalize)
    theirs, _ = verl_corr.compute_rollout_correction_weights(trainer - sampler, mask, level, threshold,
                                                             batch_normalize)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert 0 < (ours[mask.bool()] != 1).float().mean() and not ours.requires_grad


@pytest.mark.parametrize("name", list(ROLLOUT_CORRECTIONS))
def test_each_menu_correction_is_the_verl_setting_it_names(verl_corr, name):
    trainer, sampler, mask = sampler_and_trainer(seed=1)
    level, kind = ROLLOUT_CORRECTIONS[name]
    spec = 1.5 if kind == "truncate" else f"{1 / 1.5}_1.5"
    theirs, _ = verl_corr.compute_rollout_correction_weights(trainer - sampler, mask, level, spec)
    torch.testing.assert_close(correction_weights(name, trainer, sampler, mask, threshold=1.5), theirs,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(ROLLOUT_CORRECTIONS))
def test_each_menu_correction_is_the_trl_mode_it_names(name):
    """TRL's ratio for the mode (clip_min = 1/C for the mask modes, none for truncate), on the response tokens."""
    trainer, sampler, mask = sampler_and_trainer(seed=2)
    clip_min = None if name.endswith("tis") else 1 / 1.5
    trl_form = vllm_importance_sampling_ratio(trainer, sampler, mask, TRL_MODES[name], clip_min, 1.5)
    ours = correction_weights(name, trainer, sampler, mask, threshold=1.5)
    torch.testing.assert_close(ours, (trl_form * mask).expand_as(mask) * mask, rtol=1e-6, atol=1e-7)


def test_trl_ratio_by_hand():
    trainer = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    sampler = torch.log(torch.tensor([[0.25, 0.5, 1.0]]))           # rho = 2, 1, 0.5; product 1
    mask = torch.ones(1, 3)
    close = torch.testing.assert_close
    close(vllm_importance_sampling_ratio(trainer, sampler, mask, "token_truncate", None, 1.5), torch.tensor([[1.5, 1, 0.5]]))
    close(vllm_importance_sampling_ratio(trainer, sampler, mask, "token_truncate", 0.8, 1.5), torch.tensor([[1.5, 1, 0.8]]))
    close(vllm_importance_sampling_ratio(trainer, sampler, mask, "token_mask", None, 1.5), torch.tensor([[0.0, 1, 0.5]]))
    close(vllm_importance_sampling_ratio(trainer, sampler, mask, "token_mask", 0.8, 3.0), torch.tensor([[2.0, 1, 0.0]]))
    close(vllm_importance_sampling_ratio(trainer, sampler, mask, "sequence_mask", None, 3.0), torch.tensor([[1.0]]))
    sampler_nan = sampler.clone()
    sampler_nan[0, 0] = float("nan")                                  # a token vLLM could not score: rho = 1
    close(vllm_importance_sampling_ratio(trainer, sampler_nan, mask, "token_truncate", None, 3.0),
          torch.tensor([[1.0, 1, 0.5]]))
    with pytest.raises(ValueError, match="unknown vllm_importance_sampling_mode"):
        vllm_importance_sampling_ratio(trainer, sampler, mask, "tokens", None, 3.0)


def test_trl_multiplies_the_policy_loss_by_the_ratio_as_folding_it_into_the_advantages(trl_grpo):
    """TRL: per_token_loss * importance_sampling_ratio (before the KL term). The menu: A_t * w_t. Same loss and
    gradient for every loss linear in A (here TRL's default dapo and its sapo)."""
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=11, padding=0.0)
    _, sampler, _ = sampler_and_trainer(seed=3, lengths=[int(n) for n in mask.sum(-1)], width=mask.shape[1])
    weights = correction_weights("token_tis", old_log_prob, sampler.clamp(max=-1e-3), mask, threshold=2.0)
    for loss_type, name, mode, settings in [("dapo", "vanilla", "token-mean", dict(clip_ratio_c=None)),
                                            ("sapo", "sapo", "seq-mean-token-mean", {})]:
        ours = loss_and_grad(lambda lp: POLICY_LOSSES[name](lp, old_log_prob, advantages * weights, mask, mode,
                                                            **settings), log_prob)
        theirs = loss_and_grad(lambda lp: trl_compute_loss(trl_grpo, lp, old_log_prob, advantages[:, 0], mask,
                                                           loss_type=loss_type, importance_sampling_ratio=weights),
                               log_prob)
        assert_same(ours, theirs)


# ---------------------------------------------------------------------------------------------- rejection vs verl
@pytest.mark.parametrize("option", ROLLOUT_RS_OPTIONS)
def test_rollout_rejection_mask_matches_verl(verl_corr, option):
    trainer, sampler, mask = sampler_and_trainer(seed=4)
    threshold = {"token": 0.05, "seq_sum": 0.3, "seq_mean": 0.04, "seq_max": 0.13}[option.rsplit("_", 1)[0]]
    if option.endswith("k1"):
        threshold = "0.4_2.0" if option.startswith("seq_sum") else "0.7_1.4"
    ours = rollout_rejection_mask(trainer, sampler, mask, option, threshold)
    theirs, _ = verl_corr.compute_rollout_rejection_mask(trainer - sampler, mask, option, threshold)
    torch.testing.assert_close(ours, theirs)
    kept = ours.sum() / mask.sum()
    assert 0.0 < kept < 1.0, f"{option} keeps {kept:.2f} of the tokens: the case tests nothing"


def test_rollout_rejection_with_several_options_matches_verl(verl_corr):
    trainer, sampler, mask = sampler_and_trainer(seed=5)
    ours = rollout_rejection_mask(trainer, sampler, mask, "token_k1,seq_mean_k3", "0.6_1.6,0.05")
    theirs, _ = verl_corr.compute_rollout_rejection_mask(trainer - sampler, mask, "token_k1,seq_mean_k3",
                                                         "0.6_1.6,0.05")
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="unknown rollout_rs option"):
        rollout_rejection_mask(trainer, sampler, mask, "seq_max_k1", 2.0)


def test_mismatch_metrics_match_verl(verl_corr):
    trainer, sampler, mask = sampler_and_trainer(seed=6)
    ours = mismatch_metrics(trainer, sampler, mask)
    theirs = verl_corr.compute_offpolicy_metrics(trainer, sampler, mask)
    for key in ("kl", "k3_kl", "chi2_token", "chi2_seq"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    assert ours["rho_min"] < 1 < ours["rho_max"]


def test_no_mismatch_means_weight_one_everywhere():
    trainer, _, mask = sampler_and_trainer(seed=7)
    for name in ROLLOUT_CORRECTIONS:
        torch.testing.assert_close(correction_weights(name, trainer, trainer, mask), mask)
    assert mismatch_metrics(trainer, trainer, mask)["k3_kl"] == 0.0


def test_sequence_weight_is_the_product_of_the_token_ratios_by_hand():
    trainer = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.5, 0.4, 0.9]]))       # rho = 2, 1, 1.25; the last token is padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(correction_weights("sequence_tis", trainer, sampler, mask, threshold=3.0),
                               torch.tensor([[2.5, 2.5, 2.5, 0.0]]))
    torch.testing.assert_close(correction_weights("sequence_mask", trainer, sampler, mask, threshold=2.0),
                               torch.zeros(1, 4))                    # 2.5 > 2: the whole row is dropped
    torch.testing.assert_close(correction_weights("token_mask", trainer, sampler, mask, threshold=1.5),
                               torch.tensor([[0.0, 1.0, 1.25, 0.0]]))
    with pytest.raises(ValueError, match="unknown rollout correction 'tis'"):
        correction_weights("tis", trainer, sampler, mask)


# ---------------------------------------------------------------------------------------------- token selection
@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.8, 1.0])
def test_high_entropy_mask_matches_trl(trl_grpo, quantile):
    from types import SimpleNamespace

    from .test_policy_losses import _OneProcess

    g = torch.Generator().manual_seed(8)
    entropies = 3 * torch.rand(6, 10, generator=g)
    mask = (torch.arange(10) < torch.tensor([[10], [3], [7], [1], [10], [5]])).float()
    theirs = trl_grpo.get_high_entropy_mask(SimpleNamespace(accelerator=_OneProcess()), entropies, mask, 1 - quantile)
    ours = high_entropy_mask(entropies, mask, quantile)
    assert torch.equal(ours, theirs)
    assert ours.sum().item() == pytest.approx(quantile * mask.sum().item(), abs=1.0)


def test_trl_top_entropy_quantile_is_a_zero_advantage_on_the_other_tokens(trl_grpo):
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=12, padding=0.0)
    entropies = 2 * torch.rand(mask.shape, generator=torch.Generator().manual_seed(13))
    keep = high_entropy_mask(entropies, mask, 0.3)
    ours = loss_and_grad(lambda lp: POLICY_LOSSES["vanilla"](lp, old_log_prob, advantages * keep, mask,
                                                             clip_ratio_c=None), log_prob)
    theirs = loss_and_grad(lambda lp: trl_compute_loss(trl_grpo, lp, old_log_prob, advantages[:, 0], mask,
                                                       top_entropy_quantile=0.3, entropies=entropies), log_prob)
    assert_same(ours, theirs)


def test_mask_truncated_completions_by_hand():
    eos, pad = 1, 0
    completions = torch.tensor([[5, 6, 1, 0], [5, 6, 7, 8], [1, 0, 0, 0], [5, 5, 5, 1]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]).float()
    assert truncated_rows(completions, mask, eos).tolist() == [False, True, False, False]
    torch.testing.assert_close(mask_truncated_completions(completions, mask, eos),
                               mask * torch.tensor([[1.0], [0.0], [1.0], [1.0]]))
    grouped = mask_truncated_completions(completions.view(2, 2, 4), mask.view(2, 2, 4), eos)   # [B, G, T] too
    torch.testing.assert_close(grouped.view(4, 4), mask * torch.tensor([[1.0], [0.0], [1.0], [1.0]]))
    assert pad not in (eos,)


# ---------------------------------------------------------------------------------------------- estimators vs verl
def _verl_advantages(verl_algos, name, rewards, mask):
    """verl's estimator on the flat batch (rows b*G..b*G+G-1 share index b), viewed back as [B, G, T]."""
    b, g, t = mask.shape
    token_rewards = outcome_token_rewards(rewards, mask).reshape(b * g, t)
    index = np.repeat(np.arange(b), g)
    advantages, _ = verl_algos.get_adv_estimator_fn(name)(token_level_rewards=token_rewards.clone(),
                                                          response_mask=mask.reshape(b * g, t), index=index)
    return advantages.view(b, g, t)


def _grouped_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = (torch.rand(4, 5, generator=g) > 0.5).float() * torch.rand(4, 5, generator=g).round(decimals=1)
    rewards[0] = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5])
    rewards[3] = 0.0                                                  # an uninformative group
    lengths = torch.randint(1, 8, (4, 5), generator=g)
    mask = (torch.arange(8) < lengths[..., None]).float()
    return rewards, mask


@pytest.mark.parametrize("name", ["reinforce_plus_plus_baseline", "opo", "gpg"])
def test_new_estimators_match_verl(verl_algos, name):
    rewards, mask = _grouped_batch()
    ours = ADVANTAGE_ESTIMATORS[name](rewards, mask)
    ours = ours.unsqueeze(-1) * mask if ours.dim() == 2 else ours
    torch.testing.assert_close(ours, _verl_advantages(verl_algos, name, rewards, mask), rtol=1e-5, atol=1e-6)


def test_new_estimators_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    mask = (torch.arange(6) < torch.tensor([[[2], [2], [4], [4]]])).float()
    # opo: baseline (2*1 + 2*0 + 4*0 + 4*1) / 12 = 0.5
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["opo"](rewards, mask), torch.tensor([[0.5, -0.5, -0.5, 0.5]]))
    # gpg: 2 of 4 rewards non-zero: alpha = 2
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["gpg"](rewards, mask), torch.tensor([[1.0, -1.0, -1.0, 1.0]]))
    baseline = ADVANTAGE_ESTIMATORS["reinforce_plus_plus_baseline"](rewards, mask)
    values = baseline[mask.bool()]
    assert values.mean().item() == pytest.approx(0.0, abs=1e-6) and values.std().item() == pytest.approx(1.0, rel=1e-4)
    assert math.isclose(baseline[0, 0, 0].item(), -baseline[0, 1, 0].item(), rel_tol=1e-6)
