"""loss/policy_losses.py and loss/aggregation.py: each registry entry against verl 0.9.1 and TRL 1.16.0 (loss AND
gradient, on random inputs), the course's deliberate differences shown with numbers, and hand-checked cases.

The parity tests skip with one line when the library is not importable (`make test` installs both).
"""
import importlib
import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from loss import masked_mean
from loss.aggregation import agg_loss
from loss.names import LOSS_AGG_MODES
from loss.policy_losses import LINEAR_IN_ADVANTAGE, POLICY_LOSSES, hyperparameters, policy_loss

VERL_VERSION, TRL_VERSION = "0.9.1", "1.16.0"
TOL = 1e-6  # every parity difference measured so far is below 1e-7 (float32 rounding)


# ---------------------------------------------------------------------------------------------- libraries
def _library(module: str, package: str, version: str):
    """Import `module` or skip the test with one line saying why."""
    try:
        lib = importlib.import_module(package)
    except Exception as err:  # ImportError, or a broken install of one of its dependencies
        pytest.skip(f"{package} {version} is not importable ({type(err).__name__}): `make test` installs it")
    if getattr(lib, "__version__", version) != version:
        pytest.skip(f"{package} {lib.__version__} is installed; these checks pin {package} {version}")
    return importlib.import_module(module)


@pytest.fixture(scope="module")
def verl_algos():
    return _library("verl.trainer.ppo.core_algos", "verl", VERL_VERSION)


@pytest.fixture(scope="module")
def trl_grpo():
    return _library("trl.trainer.grpo_trainer", "trl", TRL_VERSION).GRPOTrainer


def verl_config(**settings):
    """verl's ActorConfig with its defaults, `settings` laid over them (policy_loss fields go into PolicyLossConfig)."""
    from verl.workers.config import ActorConfig, PolicyLossConfig

    loss_fields = {k: settings.pop(k) for k in list(settings) if k in ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub",
                                                                       "kl_cov_ratio", "ppo_kl_coef")}
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                       policy_loss=PolicyLossConfig(**loss_fields), **settings)


class _OneProcess:
    """What TRL's loss asks of accelerate, on one process."""
    num_processes, sync_gradients, is_main_process = 1, True, True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x


def trl_compute_loss(trainer_cls, logps, old_logps, advantages, mask, *, loss_type="dapo", epsilon=0.2,
                     epsilon_high=None, delta=None, beta=0.0, ref_logps=None, importance_sampling_level="token",
                     top_entropy_quantile=1.0, entropies=None, importance_sampling_ratio=None,
                     sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, max_completion_length=None):
    """TRL 1.16.0's own GRPOTrainer._compute_loss on given tensors: the trainer object is a stand-in holding only
    the settings that method reads, and the model's forward returns `logps` (and `entropies`)."""
    n, t = logps.shape
    fake = SimpleNamespace(
        top_entropy_quantile=top_entropy_quantile, off_policy_mask_threshold=None, beta=beta, loss_type=loss_type,
        importance_sampling_level=importance_sampling_level, epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        args=SimpleNamespace(delta=delta, sapo_temperature_pos=sapo_temperature_pos, steps_per_generation=1,
                             sapo_temperature_neg=sapo_temperature_neg, use_bias_correction_kl=False),
        use_vllm=importance_sampling_ratio is not None, vllm_importance_sampling_correction=True,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, accelerator=_OneProcess(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        max_completion_length=t if max_completion_length is None else max_completion_length)
    entropies = torch.zeros(n, t) if entropies is None else entropies
    fake._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, entropies, None)
    fake.get_high_entropy_mask = types.MethodType(trainer_cls.get_high_entropy_mask, fake)
    inputs = dict(prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
                  completion_ids=torch.zeros(n, t, dtype=torch.long), completion_mask=mask.long(),
                  advantages=advantages, old_per_token_logps=old_logps, num_items_in_batch=mask.sum(),
                  ref_per_token_logps=ref_logps, importance_sampling_ratio=importance_sampling_ratio)
    return trainer_cls._compute_loss(fake, None, inputs)


# ---------------------------------------------------------------------------------------------- inputs
LENGTHS = [12, 5, 3, 9, 1, 12, 7, 10]


def make_inputs(seed=0, lengths=LENGTHS, width=12, spread=1.0, token_advantages=False, padding=7.0):
    """Random [N, T] inputs: log-probs < 0, old log-probs `spread` away (ratios ~0.2..5, so every clip acts),
    advantages per sequence or per token, variable lengths, and `padding` written into the padding."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
    log_prob = -torch.rand(n, width, generator=g) * 2.0 - 0.01
    old_log_prob = (log_prob + spread * torch.randn(n, width, generator=g)).clamp(max=-0.001)
    advantages = torch.randn(n, width if token_advantages else 1, generator=g).expand(n, width).contiguous()
    pad = mask == 0
    return (log_prob.masked_fill(pad, padding), old_log_prob.masked_fill(pad, padding),
            advantages.masked_fill(pad, padding), mask)


def loss_and_grad(fn, log_prob):
    """fn(leaf) and the gradient with respect to the leaf."""
    leaf = log_prob.clone().requires_grad_(True)
    loss = fn(leaf)
    loss.backward()
    return loss.detach(), leaf.grad


def assert_same(ours, theirs, tol=TOL):
    (loss_a, grad_a), (loss_b, grad_b) = ours, theirs
    scale = max(1.0, abs(loss_b.item()))
    assert abs(loss_a.item() - loss_b.item()) <= tol * scale, f"loss {loss_a.item()} vs {loss_b.item()}"
    assert (grad_a - grad_b).abs().max().item() <= tol, f"gradient differs by {(grad_a - grad_b).abs().max().item()}"


# Each entry with verl's defaults, and with settings that make every branch act on the random inputs.
VERL_CASES = [
    ("vanilla", {}), ("vanilla", dict(clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=2.0)),
    ("gspo", {}), ("gspo", dict(clip_ratio_low=0.05, clip_ratio_high=0.1)),
    ("cispo", {}), ("cispo", dict(clip_ratio_low=0.5, clip_ratio_high=1.0)),
    ("geo_mean", {}), ("geo_mean", dict(clip_ratio_low=0.4, clip_ratio_high=0.4)),
    ("sapo", {}), ("sapo", dict(tau_pos=2.0, tau_neg=3.0)),
    ("gpg", {}),
    ("clip_cov", {}), ("clip_cov", dict(clip_cov_ratio=0.2, clip_cov_lb=0.0, clip_cov_ub=5.0)),
    ("kl_cov", {}), ("kl_cov", dict(kl_cov_ratio=0.2, ppo_kl_coef=1.0)),
    ("dppo_tv", {}), ("dppo_tv", dict(clip_ratio_low=0.05, clip_ratio_high=0.05, clip_ratio_c=2.0)),
    ("dppo_kl", {}), ("dppo_kl", dict(clip_ratio_low=0.02, clip_ratio_high=0.02, clip_ratio_c=2.0)),
]


@pytest.mark.parametrize("token_advantages", [False, True])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("name, settings", VERL_CASES)
def test_each_policy_loss_matches_verl_loss_and_gradient(verl_algos, name, settings, mode, token_advantages):
    if name == "sapo" and mode != "seq-mean-token-mean":
        pytest.skip("verl 0.9.1 aggregates sapo with seq-mean-token-mean whatever the mode (see the test below)")
    log_prob, old_log_prob, advantages, mask = make_inputs(token_advantages=token_advantages)
    config = verl_config(**settings)
    verl_fn = verl_algos.get_policy_loss_fn(name)

    def ours(lp):
        torch.manual_seed(1234)  # clip_cov picks its tokens with torch's global generator, as verl
        return POLICY_LOSSES[name](lp, old_log_prob, advantages, mask, mode, **settings)

    def theirs(lp):
        torch.manual_seed(1234)
        return verl_fn(old_log_prob, lp, advantages, mask, mode, config)[0]

    assert_same(loss_and_grad(ours, log_prob), loss_and_grad(theirs, log_prob))


def test_the_random_inputs_exercise_every_clip(verl_algos):
    """The parity inputs are not trivially on-policy: each clip cuts a real share of the tokens."""
    log_prob, old_log_prob, advantages, mask = make_inputs()
    seen = {}
    for name, settings in [("vanilla", {}), ("geo_mean", {}), ("cispo", {}), ("dppo_tv", {}), ("clip_cov", {}),
                           ("kl_cov", dict(kl_cov_ratio=0.2))]:
        metrics = {}
        POLICY_LOSSES[name](log_prob, old_log_prob, advantages, mask, metrics=metrics, **settings)
        seen[name] = metrics
    assert 0.2 < seen["vanilla"]["clip_fraction"] < 0.8 and seen["vanilla"]["clip_fraction_lower"] > 0  # dual clip
    assert seen["geo_mean"]["clip_fraction"] > 0.2 and seen["geo_mean"]["clip_fraction_lower"] > 0.2
    assert 0.3 < seen["cispo"]["clip_fraction"] < 1.0
    assert 0.1 < seen["dppo_tv"]["clip_fraction"] < 0.9 and seen["dppo_tv"]["clip_fraction_lower"] > 0
    assert seen["clip_cov"]["clip_fraction"] > 0 and 0.1 < seen["kl_cov"]["clip_fraction"] < 0.5


# ---------------------------------------------------------------------------------------------- TRL
TRL_CASES = [  # (label, our entry and settings, TRL's GRPOConfig settings)
    ("dapo (TRL's default)", "vanilla", "token-mean", dict(clip_ratio_high=0.28, clip_ratio_c=None),
     dict(epsilon_high=0.28)),
    ("grpo", "vanilla", "seq-mean-token-mean", dict(clip_ratio_c=None), dict(loss_type="grpo")),
    ("bnpo", "vanilla", "token-mean", dict(clip_ratio_c=None), dict(loss_type="bnpo")),
    ("dr_grpo", "vanilla", "seq-mean-token-sum-norm", dict(clip_ratio_c=None, max_len=16),
     dict(loss_type="dr_grpo", max_completion_length=16)),
    ("delta two-sided clip", "vanilla", "token-mean", dict(clip_ratio_c=None, delta=2.0), dict(delta=2.0)),
    ("GSPO (sequence level)", "gspo", "seq-mean-token-mean", {},
     dict(loss_type="grpo", importance_sampling_level="sequence")),
    ("GSPO, token-mean", "gspo", "token-mean", dict(clip_ratio_low=0.1, clip_ratio_high=0.15),
     dict(importance_sampling_level="sequence", epsilon=0.1, epsilon_high=0.15)),
    ("cispo one-sided cap", "cispo", "token-mean", dict(epsilon_high=1.5), dict(loss_type="cispo", epsilon_high=1.5)),
    ("cispo cap 5.0", "cispo", "token-mean", dict(epsilon_high=5.0), dict(loss_type="cispo", epsilon_high=5.0)),
    ("sapo", "sapo", "seq-mean-token-mean", dict(tau_pos=1.5, tau_neg=2.0),
     dict(loss_type="sapo", sapo_temperature_pos=1.5, sapo_temperature_neg=2.0)),
]


@pytest.mark.parametrize("token_advantages", [False, True])
@pytest.mark.parametrize("label, name, mode, settings, trl_settings", TRL_CASES, ids=[c[0] for c in TRL_CASES])
def test_trl_loss_types_match_their_registry_entry(trl_grpo, label, name, mode, settings, trl_settings,
                                                   token_advantages):
    if name == "gspo" and token_advantages:
        pytest.skip("GSPO takes one advantage per sequence; with per-token advantages verl's form (followed here) "
                    "and TRL's differ (see gspo's docstring)")
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=3, token_advantages=token_advantages, padding=0.0)
    trl_advantages = advantages if token_advantages else advantages[:, 0]        # TRL's advantages: [N] or [N, T]
    ours = loss_and_grad(lambda lp: POLICY_LOSSES[name](lp, old_log_prob, advantages, mask, mode, **settings),
                         log_prob)
    theirs = loss_and_grad(lambda lp: trl_compute_loss(trl_grpo, lp, old_log_prob, trl_advantages, mask,
                                                       **trl_settings), log_prob)
    assert_same(ours, theirs)


def test_trl_delta_is_verl_dual_clip_when_delta_exceeds_the_upper_clip():
    """TRL's two-sided clip `delta` and verl's dual clip `clip_ratio_c` cut the same tokens (delta > 1 + eps_high)."""
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=5)
    trl_form = loss_and_grad(lambda lp: POLICY_LOSSES["vanilla"](lp, old_log_prob, advantages, mask,
                                                                 clip_ratio_c=None, delta=2.5), log_prob)
    verl_form = loss_and_grad(lambda lp: POLICY_LOSSES["vanilla"](lp, old_log_prob, advantages, mask,
                                                                  clip_ratio_c=2.5), log_prob)
    assert_same(trl_form, verl_form, tol=1e-7)
    no_dual = loss_and_grad(lambda lp: POLICY_LOSSES["vanilla"](lp, old_log_prob, advantages, mask,
                                                                clip_ratio_c=None), log_prob)
    assert no_dual[0].item() > verl_form[0].item() + 0.01  # the dual clip does change this batch


# ---------------------------------------------------------------------------------------------- deliberate differences
def test_no_log_ratio_clamp_differs_from_verl_only_beyond_e20(verl_algos):
    """verl clamps log r to [-20, 20]; the course does not. One token with log r = 30 and A = -1 (dual clip off):
    the course's loss is e^30 (a bug made visible), verl's e^20. Below |log r| = 20 the two agree (tests above)."""
    log_prob = torch.tensor([[-0.5, -1.0]])
    old_log_prob = torch.tensor([[-30.5, -1.0]])              # log r = 30 on the first token, 0 on the second
    mask, advantages = torch.ones(1, 2), torch.tensor([[-1.0, -1.0]])
    ours = POLICY_LOSSES["vanilla"](log_prob, old_log_prob, advantages, mask, clip_ratio_c=None)
    theirs = verl_algos.get_policy_loss_fn("vanilla")(old_log_prob, log_prob, advantages, mask, "token-mean",
                                                       verl_config(clip_ratio_c=1e30))[0]
    assert ours.item() == pytest.approx((torch.tensor(30.0).exp().item() + 1.0) / 2, rel=1e-5)     # 5.3e12
    assert theirs.item() == pytest.approx((torch.tensor(20.0).exp().item() + 1.0) / 2, rel=1e-5)   # 2.4e8


def test_padding_may_hold_inf_where_verl_gives_nan(verl_algos):
    log_prob, old_log_prob, advantages, mask = make_inputs(padding=float("inf"))
    finite = make_inputs(padding=0.0)
    for name in POLICY_LOSSES:
        generator = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)   # clip_cov's random pick
        extra = [dict(generator=g) if name == "clip_cov" else {} for g in generator]
        ours = loss_and_grad(lambda lp: POLICY_LOSSES[name](lp, old_log_prob, advantages, mask, **extra[0]), log_prob)
        clean = loss_and_grad(lambda lp: POLICY_LOSSES[name](lp, *finite[1:], **extra[1]), finite[0])
        assert torch.isfinite(ours[0]) and torch.isfinite(ours[1]).all(), name
        assert_same(ours, clean, tol=1e-7)
    # verl 0.9.1 on the same inputs: a NaN loss (gspo, geo_mean, sapo) or a NaN gradient for every entry but vanilla
    broken = []
    for name in POLICY_LOSSES:
        loss, grad = loss_and_grad(lambda lp: verl_algos.get_policy_loss_fn(name)(
            old_log_prob, lp, advantages, mask, "token-mean", verl_config())[0], log_prob)
        if torch.isnan(loss) or torch.isnan(grad).any():
            broken.append(name)
    assert broken == [name for name in POLICY_LOSSES if name != "vanilla"]


def test_geo_mean_leaves_empty_rows_out_verl_counts_them(verl_algos):
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=2, lengths=[6, 0, 4, 0], width=6)
    ours = POLICY_LOSSES["geo_mean"](log_prob, old_log_prob, advantages, mask)
    theirs = verl_algos.get_policy_loss_fn("geo_mean")(old_log_prob, log_prob, advantages, mask, "token-mean",
                                                        verl_config())[0]
    # verl divides the same sum by all 4 rows, the course by the 2 non-empty ones: exactly a factor 2
    assert ours.item() == pytest.approx(2 * theirs.item(), rel=1e-6)
    assert abs(ours.item()) > 0.01


def test_sapo_honours_the_aggregation_verl_forces_seq_mean_token_mean(verl_algos):
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=4)
    verl_loss = verl_algos.get_policy_loss_fn("sapo")(old_log_prob, log_prob, advantages, mask, "token-mean",
                                                       verl_config())[0]
    ours_token = POLICY_LOSSES["sapo"](log_prob, old_log_prob, advantages, mask, "token-mean")
    ours_seq = POLICY_LOSSES["sapo"](log_prob, old_log_prob, advantages, mask, "seq-mean-token-mean")
    assert ours_seq.item() == pytest.approx(verl_loss.item(), abs=1e-6)
    assert abs(ours_token.item() - verl_loss.item()) > 0.01        # here the mode asked for is the one used


def test_aggregation_matches_verl_and_gives_zero_where_verl_gives_nan(verl_algos):
    loss_mat = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(7) < torch.tensor([[7], [2], [0], [5], [1]])).float()
    for mode in LOSS_AGG_MODES:
        ours, theirs = agg_loss(loss_mat, mask, mode), verl_algos.agg_loss(loss_mat, mask, mode)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-7), mode
        empty = torch.zeros_like(mask)
        assert agg_loss(loss_mat, empty, mode).item() == 0.0
    assert torch.isnan(verl_algos.agg_loss(loss_mat, torch.zeros_like(mask), "token-mean"))


# ---------------------------------------------------------------------------------------------- by hand
def test_on_policy_every_ratio_loss_has_the_reinforce_gradient():
    """At r = 1 (log_prob == old_log_prob) vanilla, gspo, sapo, cispo, dppo and clip-free kl_cov all give the
    REINFORCE gradient -A / #tokens per token under token-mean; gpg (no ratio) too."""
    log_prob, _, advantages, mask = make_inputs(seed=6, padding=0.0)
    expected = -advantages * mask / mask.sum()
    for name in ("vanilla", "gspo", "sapo", "cispo", "dppo_tv", "dppo_kl", "gpg"):
        _, grad = loss_and_grad(lambda lp: POLICY_LOSSES[name](lp, log_prob.detach(), advantages, mask), log_prob)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7, msg=name)


def test_vanilla_by_hand():
    # one token each: r = 2 with A = +1 (clipped at 1.2), r = 0.5 with A = -1 (clipped at 0.8), r = 4 with A = -1
    # (PPO's clip does not bound it, the dual clip does: 3), r = 1.1 with A = +1 (inside)
    ratio = torch.tensor([[2.0], [0.5], [4.0], [1.1]])
    advantages = torch.tensor([[1.0], [-1.0], [-1.0], [1.0]])
    mask = torch.ones(4, 1)
    metrics = {}
    loss = POLICY_LOSSES["vanilla"](ratio.log(), torch.zeros(4, 1), advantages, mask, metrics=metrics)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 3.0 - 1.1) / 4)
    assert metrics["clip_fraction"] == pytest.approx(0.5) and metrics["clip_fraction_lower"] == pytest.approx(0.25)


def test_cispo_keeps_a_gradient_where_ppo_cuts_it():
    log_prob = torch.tensor([[0.0]]).log1p() + torch.tensor([[2.0]]).log()    # r = 2 against old 0
    mask, advantages = torch.ones(1, 1), torch.ones(1, 1)
    _, ppo_grad = loss_and_grad(lambda lp: POLICY_LOSSES["vanilla"](lp, torch.zeros(1, 1), advantages, mask), log_prob)
    _, cispo_grad = loss_and_grad(lambda lp: POLICY_LOSSES["cispo"](lp, torch.zeros(1, 1), advantages, mask), log_prob)
    assert ppo_grad.item() == 0.0
    assert cispo_grad.item() == pytest.approx(-1.2)            # -sg[clip(2)] * A = -1.2


def test_sapo_gate_has_slope_one_at_ratio_one_and_fades():
    for tau in (1.0, 1.05, 3.0):
        log_prob = torch.zeros(1, 1)
        _, grad = loss_and_grad(lambda lp: POLICY_LOSSES["sapo"](lp, torch.zeros(1, 1), torch.ones(1, 1),
                                                                torch.ones(1, 1), tau_pos=tau), log_prob)
        assert grad.item() == pytest.approx(-1.0)
        _, far = loss_and_grad(lambda lp: POLICY_LOSSES["sapo"](lp, torch.zeros(1, 1), torch.ones(1, 1),
                                                               torch.ones(1, 1), tau_pos=tau), log_prob + 1.5)
        assert -1.0 < far.item() < -0.0 and abs(far.item()) < 0.8


def test_geo_mean_is_the_geometric_mean_of_the_ratios():
    ratios = torch.tensor([[1.1, 0.9, 1.05]])
    loss = POLICY_LOSSES["geo_mean"](ratios.log(), torch.zeros(1, 3), torch.full((1, 3), 2.0), torch.ones(1, 3))
    assert loss.item() == pytest.approx(-2.0 * ratios.prod().item() ** (1 / 3), rel=1e-6)


def test_linear_in_advantage_entries_scale_token_by_token():
    """Folding w >= 0 into A multiplies each token's loss by w (what the menu relies on for IS corrections).

    l_i,t alone: the loss of row i with A one-hot at t (a zero advantage gives a zero loss in these entries)."""
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=8, padding=0.0)
    weights = 2 * torch.rand(mask.shape, generator=torch.Generator().manual_seed(9))
    for name in LINEAR_IN_ADVANTAGE:
        folded = POLICY_LOSSES[name](log_prob, old_log_prob, advantages * weights, mask, "seq-mean-token-sum")
        weighted_sum = 0.0
        for row, length in enumerate(LENGTHS):
            row_mask = torch.zeros_like(mask)
            row_mask[row] = mask[row]
            for col in range(length):
                one_hot = torch.zeros_like(mask)
                one_hot[row, col] = 1.0
                alone = POLICY_LOSSES[name](log_prob, old_log_prob, advantages * one_hot, row_mask,
                                            "seq-mean-token-sum")
                weighted_sum += weights[row, col].item() * alone.item()
        assert folded.item() == pytest.approx(weighted_sum / len(LENGTHS), rel=1e-5, abs=1e-6), name


def test_unknown_names_and_hyperparameters_give_one_clear_line():
    log_prob, old_log_prob, advantages, mask = make_inputs()
    with pytest.raises(ValueError, match="unknown policy loss 'ppo2': choose one of vanilla, gspo"):
        policy_loss("ppo2", log_prob, old_log_prob, advantages, mask)
    with pytest.raises(ValueError, match="has no hyperparameter tau_pos"):
        policy_loss("vanilla", log_prob, old_log_prob, advantages, mask, tau_pos=2.0)
    with pytest.raises(ValueError, match="unknown loss_agg_mode"):
        policy_loss("gspo", log_prob, old_log_prob, advantages, mask, "token-sum")
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss("vanilla", log_prob, old_log_prob, advantages, mask, clip_ratio_c=0.5)


def test_hyperparameters_carry_verl_defaults():
    assert hyperparameters("vanilla") == dict(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, delta=None)
    assert hyperparameters("sapo") == dict(tau_pos=1.0, tau_neg=1.05)
    assert hyperparameters("clip_cov")["clip_cov_ratio"] == 0.0002 and hyperparameters("kl_cov")["ppo_kl_coef"] == 0.1
    assert hyperparameters("gpg") == {}


def test_verl_config_defaults_are_the_registry_defaults(verl_algos):
    config = verl_config()
    assert (config.clip_ratio_low, config.clip_ratio_high, config.clip_ratio_c) == (0.2, 0.2, 3.0)
    assert (config.tau_pos, config.tau_neg) == (1.0, 1.05)
    loss = config.policy_loss
    assert (loss.clip_cov_ratio, loss.clip_cov_lb, loss.clip_cov_ub) == (0.0002, 1.0, 5.0)
    assert (loss.kl_cov_ratio, loss.ppo_kl_coef) == (0.0002, 0.1)
    assert set(POLICY_LOSSES) <= set(verl_algos.POLICY_LOSS_REGISTRY)


def test_metrics_report_ppo_kl_as_the_mean_negative_log_ratio():
    log_prob, old_log_prob, advantages, mask = make_inputs(seed=10, padding=0.0)
    metrics = {}
    POLICY_LOSSES["gspo"](log_prob, old_log_prob, advantages, mask, metrics=metrics)
    assert metrics["ppo_kl"] == pytest.approx(masked_mean(old_log_prob - log_prob, mask).item(), rel=1e-6)
