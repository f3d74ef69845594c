"""Graded tests of the GRPO trainer exercise (exercises/grpo_trainer.py).

Everything runs on a one-layer, 16-wide GPT over the course vocabulary, seeded, on CPU, in milliseconds.
Reference values come from the policy itself (its log-probs recomputed in one forward pass), hand-built
completions, and properties; nothing is imported from solutions/. The trainer runs your own GRPOLoss, so
these tests need a working grpo_loss: while it still raises NotImplementedError they fail with
"finish grpo_loss first".
"""
import copy
import inspect

import pytest
import torch

from tests.autograder.snapshots import assert_close
from training.model import GPT, GPTConfig
from training.rewards import REWARDS
from training.rollout import sequence_logprobs
from training.tokenizer import EOS_ID, PAD_ID, TOKENIZER

DIGIT = {d: TOKENIZER.encode(str(d))[0] for d in range(10)}


# ---------------------------------------------------------------------------------------------- toys
def tiny_gpt(seed: int = 0, block_size: int = 10) -> GPT:
    """A 1-layer, 2-head, 16-wide GPT with the course vocabulary: random, seeded, fast."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16))


class ToyTask:
    """The smallest task the trainer accepts: a rule reward over completions and `max_new_tokens`."""

    name = "toy"

    def __init__(self, max_new_tokens: int = 4):
        self.max_new_tokens = max_new_tokens

    def reward(self, completions, answers, kind="exact"):
        return REWARDS[kind](completions, answers)


def toy_prompts(batch_size: int) -> torch.Tensor:
    """[B, 3] distinct prompts of digits."""
    return torch.tensor([[DIGIT[(3 * b) % 10], DIGIT[(7 * b + 1) % 10], DIGIT[(b + 5) % 10]] for b in range(batch_size)])


class Batch:
    def __init__(self, prompts, answers):
        self.prompts, self.answers = prompts, answers


def toy_batch(batch_size: int) -> Batch:
    answers = torch.tensor([[DIGIT[7], EOS_ID]] * batch_size)
    return Batch(toy_prompts(batch_size), answers)


class RaisingModel(torch.nn.Module):
    """A reference model that must never run."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the reference model was called although kl_beta == 0: skip the reference pass entirely")


class CountingModel(torch.nn.Module):
    """Wraps a model; counts forward calls and whether autograd was on during each."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, idx, kv_cache=None):
        self.calls.append((tuple(idx.shape), torch.is_grad_enabled()))
        return self.inner(idx, kv_cache=kv_cache)


class LossRecorder(torch.nn.Module):
    """Stands in for trainer.grpo_loss: calls the real loss, keeps its inputs, and checks at the start of each
    backward pass that the policy's gradients were cleared (a hook on the returned loss)."""

    def __init__(self, inner, model):
        super().__init__()
        self.inner = inner
        self.model = model
        self.calls = []
        self.dirty_backward = 0
        self.backwards = 0

    @property
    def metrics(self):
        return self.inner.metrics

    def forward(self, *args, **kwargs):
        bound = inspect.signature(self.inner.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append({name: snapshot(value) for name, value in bound.arguments.items()})
        loss = self.inner(*args, **kwargs)
        if loss.requires_grad:
            loss.register_hook(self._on_backward)
        return loss

    def _on_backward(self, grad):
        self.backwards += 1
        if any(p.grad is not None and bool((p.grad != 0).any()) for p in self.model.parameters()):
            self.dirty_backward += 1
        return grad


def snapshot(value):
    """(a detached copy, whether it required grad) of a tensor argument; (value, None) for anything else."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone(), value.requires_grad
    return value, None


def recorded(call, name):
    """(detached tensor, requires_grad at call time) of one recorded loss argument."""
    return call[name]


class StepCounter:
    """Wraps optimizer.step (on the instance): counts steps and records the gradient norm seen by each."""

    def __init__(self, optimizer, params):
        self.count, self.norms, self.params = 0, [], list(params)
        self.inner = optimizer.step
        optimizer.step = self

    def __call__(self, *args, **kwargs):
        self.count += 1
        grads = [p.grad.detach().flatten() for p in self.params if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()) if grads else 0.0)
        return self.inner(*args, **kwargs)


def require_loss(grpo_loss):
    """Fail clearly when the student's GRPO loss is not written yet (the trainer runs it)."""
    try:
        grpo_loss.group_advantages(torch.tensor([[0.0, 1.0]]))
        logp = torch.zeros(1, 2, 1)
        grpo_loss.GRPOLoss(0.2, 0.0, normalize_std=False)(logp, logp, torch.tensor([[0.0, 1.0]]), None,
                                                          torch.ones(1, 2, 1))
    except NotImplementedError as err:
        pytest.fail(f"finish grpo_loss first: the trainer runs your group_advantages and GRPOLoss, which still "
                    f"raise NotImplementedError ({err})")


def make_trainer(grpo_trainer, model=None, ref_model=None, *, group_size=4, kl_beta=0.0, seed=0, **options):
    model = model if model is not None else tiny_gpt(seed)
    options.setdefault("task", ToyTask())
    options.setdefault("generator", torch.Generator().manual_seed(seed))
    return grpo_trainer.GRPOTrainer(model, ref_model, group_size, 0.2, kl_beta, **options)


def policy_logprobs(model, prompts, completions, group_size, temperature=1.0):
    """The model's log-probs of grouped completions [B, G, T] given prompts [B, P], one no-grad pass."""
    b, g, t = completions.shape
    with torch.no_grad():
        flat = sequence_logprobs(model, prompts.repeat_interleave(g, dim=0), completions.reshape(b * g, t),
                                 temperature=temperature)
    return flat.view(b, g, t)


# ---------------------------------------------------------------------------------------------- rollout
@pytest.mark.points(2)
def test_generate_group_outputs_shapes_and_masks(grpo_trainer):
    """G samples per prompt, shaped [B, G, T]; mask 1 through the first EOS, PAD / logprob 0 after it."""
    trainer = make_trainer(grpo_trainer, group_size=4, task=ToyTask(max_new_tokens=6))
    prompts = toy_prompts(3)
    before = prompts.clone()
    out = trainer.generate_group_outputs(prompts)
    assert torch.equal(prompts, before), "generate_group_outputs modified the prompts it was given"
    for name in ("completions", "logprobs", "mask"):
        value = getattr(out, name)
        assert value.dim() == 3 and tuple(value.shape[:2]) == (3, 4), (
            f"{name} has shape {tuple(value.shape)}, expected [B, G, T] = (3, 4, T): view the B*G rows as [B, G, T]")
    t = out.completions.shape[2]
    assert 1 <= t <= 6, f"T = {t} tokens, expected between 1 and max_new_tokens = 6"
    assert out.completions.dtype == torch.long, f"completions dtype {out.completions.dtype}, expected torch.long"
    assert out.logprobs.shape == out.mask.shape == out.completions.shape, "completions, logprobs, mask differ in shape"
    assert not out.logprobs.requires_grad, "the rollout's log-probs carry a gradient: sample under no grad"
    mask = out.mask.bool()
    assert mask[..., 0].all(), "every sample has at least one response token: mask[..., 0] must be 1"
    assert (out.mask[..., 1:] <= out.mask[..., :-1]).all(), "the mask must be ones then zeros (a prefix)"
    is_eos = out.completions == EOS_ID
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0   # strictly after the first EOS
    assert torch.equal(mask, ~after_eos), "mask must be 1 up to and including the first EOS, 0 after it"
    assert (out.completions[~mask] == PAD_ID).all(), "tokens after EOS must be PAD"
    assert (out.logprobs[~mask] == 0).all(), "log-probs after EOS must be 0"
    assert (out.logprobs[mask] <= 0).all(), "log-probs must be <= 0"


@pytest.mark.points(2)
def test_generate_group_outputs_rows_follow_their_prompt(grpo_trainer):
    """Samples g of prompt b are continuations of prompt b, and their log-probs are the policy's (pi_old)."""
    model = tiny_gpt(1)
    trainer = make_trainer(grpo_trainer, model, group_size=3, task=ToyTask(max_new_tokens=5))
    prompts = toy_prompts(4)
    out = trainer.generate_group_outputs(prompts)
    expected = policy_logprobs(model, prompts, out.completions, 3, trainer.temperature)
    mask = out.mask.bool()
    assert_close(out.logprobs[mask], expected[mask], "sampled log-probs vs the policy's log-probs of those samples",
                 "sample g of prompt b must continue prompt b: repeat each prompt G times with "
                 "repeat_interleave (rows b*G .. b*G+G-1), not prompts.repeat(G, 1), and view as [B, G, T]")


@pytest.mark.points(1)
def test_generate_group_outputs_seeded(grpo_trainer):
    """The trainer's generator decides the samples: the same seed gives the same completions."""
    prompts = toy_prompts(3)
    runs = [make_trainer(grpo_trainer, tiny_gpt(2), seed=s).generate_group_outputs(prompts).completions
            for s in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]), "same generator seed, different samples: pass generator=self.generator"
    assert not torch.equal(runs[0], runs[2]), "different seeds gave identical samples: is self.generator used?"


# ---------------------------------------------------------------------------------------------- reward
@pytest.mark.points(2)
def test_compute_rewards_known_completions(grpo_trainer):
    """The task's rule scores each sample against ITS prompt's answer; rewards are [B, G]."""
    d, eos, pad = DIGIT, EOS_ID, PAD_ID
    answers = torch.tensor([[d[1], d[2], eos], [d[5], d[5], eos]])
    completions = torch.tensor([
        [[d[1], d[2], eos, pad], [d[1], d[3], eos, pad], [d[5], d[5], eos, pad]],    # right, half, other's answer
        [[d[5], d[5], eos, pad], [d[5], d[5], d[5], eos], [d[1], d[2], eos, pad]],   # right, too long, other's
    ])
    exact = make_trainer(grpo_trainer, group_size=3, reward_kind="exact").compute_rewards(answers, completions)
    assert tuple(exact.shape) == (2, 3), f"rewards shape {tuple(exact.shape)}, expected [B, G] = (2, 3)"
    if torch.equal(exact, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])):
        pytest.fail("samples were scored against the wrong prompt's answer: repeat the answers with "
                    "repeat_interleave(G, dim=0), the same way as the prompts")
    assert_close(exact, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], "exact-match rewards",
                 "score every sample with task.reward(flat completions, answers repeated G times, kind=reward_kind)")
    partial = make_trainer(grpo_trainer, group_size=3, reward_kind="partial").compute_rewards(answers, completions)
    assert_close(partial, [[1.0, 2 / 3, 1 / 3], [1.0, 2 / 3, 1 / 3]], "partial-credit rewards",
                 "pass kind=self.reward_kind to task.reward")


# ---------------------------------------------------------------------------------------------- advantages
@pytest.mark.points(2)
def test_advantages_group_normalised(grpo_trainer, grpo_loss):
    """GRPO's baseline is each prompt's own group: zero mean and unit std per group, whatever the batch."""
    require_loss(grpo_loss)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 1.0], [10.0, 10.0, 10.0, 11.0], [5.0, 6.0, 7.0, 9.0]])
    trainer = make_trainer(grpo_trainer, group_size=4)
    advantages = trainer.compute_advantages(rewards)
    assert tuple(advantages.shape) == (3, 4), f"advantages shape {tuple(advantages.shape)}, expected [B, G] = (3, 4)"
    expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)
    assert_close(advantages.sum(dim=1), torch.zeros(3), "per-group sum of the advantages",
                 "advantages not zero-mean per group: normalised over the batch instead of the group?")
    assert_close(advantages, expected, "GRPO advantages",
                 "A = (r - group mean) / (group std + eps): use group_advantages over each prompt's G samples")
    dr = make_trainer(grpo_trainer, group_size=4, normalize_std=False).compute_advantages(rewards)
    assert_close(dr, rewards - rewards.mean(1, keepdim=True), "advantages with normalize_std=False",
                 "pass normalize_std through: without it the advantage is r - group mean")


# ---------------------------------------------------------------------------------------------- log-probs
@pytest.mark.points(2)
def test_old_logprobs_detached_and_from_pi_old(grpo_trainer):
    """log pi_old: no gradient, equal to the sampling policy's log-probs of the samples."""
    model = tiny_gpt(3)
    trainer = make_trainer(grpo_trainer, model, RaisingModel(), group_size=4, kl_beta=0.0)
    prompts = toy_prompts(3)
    out = trainer.generate_group_outputs(prompts)
    old, ref = trainer.old_and_reference_logprobs(prompts, out)
    assert ref is None, "kl_beta == 0: the reference log-probs must be None (no reference pass)"
    assert not old.requires_grad, "old log-probs carry a gradient: pi_old is a constant (detach / no_grad)"
    assert tuple(old.shape) == tuple(out.mask.shape), f"old log-probs shape {tuple(old.shape)}, expected [B, G, T]"
    mask = out.mask.bool()
    assert_close(old[mask], policy_logprobs(model, prompts, out.completions, 4, trainer.temperature)[mask],
                 "old log-probs", "log pi_old is the log-prob the sampling policy gave each sampled token")


@pytest.mark.points(2)
def test_reference_pass_no_grad_once(grpo_trainer, grpo_loss):
    """kl_beta > 0: one reference forward over all B*G rows, without gradient, and its log-probs reach the loss."""
    require_loss(grpo_loss)
    model = tiny_gpt(4)
    ref_inner = tiny_gpt(5)
    ref = CountingModel(ref_inner)
    trainer = make_trainer(grpo_trainer, model, ref, group_size=4, kl_beta=0.1)
    recorder = LossRecorder(trainer.grpo_loss, model)
    trainer.grpo_loss = recorder
    captured = []
    generate = trainer.generate_group_outputs
    trainer.generate_group_outputs = lambda prompts, *a, **k: captured.append(generate(prompts, *a, **k)) or captured[-1]
    batch = toy_batch(4)
    trainer.training_step(batch)
    assert len(ref.calls) == 1, (f"the reference model ran {len(ref.calls)} times in one training_step: compute "
                                 f"its log-probs once per batch (one forward over all B*G rows), before the updates")
    shape, grad_enabled = ref.calls[0]
    assert shape[0] == 4 * 4, f"the reference pass saw {shape[0]} rows, expected B*G = 16 (all samples at once)"
    assert not grad_enabled, "the reference pass ran with autograd on: wrap it in torch.no_grad()"
    expected = policy_logprobs(ref_inner, batch.prompts, captured[0].completions, 4, trainer.temperature)
    mask = captured[0].mask.bool()
    for call in recorder.calls:
        ref_logp, ref_grad = recorded(call, "reference_logprobs")
        assert ref_logp is not None, "kl_beta > 0 but the loss got reference_logprobs=None"
        assert not ref_grad, "reference log-probs carry a gradient"
        for group in range(ref_logp.shape[0]):
            assert any(torch.allclose(ref_logp[group][mask[b]], expected[b][mask[b]], rtol=1e-4, atol=1e-5)
                       for b in range(4)), "the reference log-probs given to the loss are not the reference model's"


# ---------------------------------------------------------------------------------------------- the update
def _recorded_step(grpo_trainer, *, lr=0.05, num_iterations=2, num_minibatches=2, seed=6):
    model = tiny_gpt(seed)
    trainer = make_trainer(grpo_trainer, model, RaisingModel(), group_size=4, kl_beta=0.0, seed=seed,
                           optimizer=torch.optim.Adam(model.parameters(), lr=lr), num_iterations=num_iterations,
                           num_minibatches=num_minibatches, reward_kind="partial", task=ToyTask(max_new_tokens=3))
    recorder = LossRecorder(trainer.grpo_loss, model)
    trainer.grpo_loss = recorder
    captured = []
    generate = trainer.generate_group_outputs
    trainer.generate_group_outputs = lambda prompts, *a, **k: captured.append(generate(prompts, *a, **k)) or captured[-1]
    counter = StepCounter(trainer.optimizer, model.parameters())
    pi_old = copy.deepcopy(model)
    batch = toy_batch(4)
    metrics = trainer.training_step(batch)
    return trainer, model, pi_old, batch, captured, recorder, counter, metrics


@pytest.mark.points(3)
def test_old_logprobs_taken_before_the_update(grpo_trainer, grpo_loss):
    """Every minibatch of every iteration compares pi_theta with the SAME pi_old: the policy before this step."""
    require_loss(grpo_loss)
    _, _, pi_old, batch, captured, recorder, _, _ = _recorded_step(grpo_trainer)
    assert len(captured) == 1, f"training_step sampled {len(captured)} times, expected once per step"
    out = captured[0]
    expected = policy_logprobs(pi_old, batch.prompts, out.completions, 4)
    assert recorder.calls, "training_step never called self.grpo_loss"
    moved = 0.0
    for number, call in enumerate(recorder.calls):
        old, old_grad = recorded(call, "old_policy_logprobs")
        new, new_grad = recorded(call, "policy_logprobs")
        assert not old_grad, "old_policy_logprobs carry a gradient: log pi_old must be detached"
        assert new_grad, "policy_logprobs given to the loss carry no gradient: recompute them with autograd on"
        mask = recorded(call, "response_mask")[0]
        assert mask is not None and tuple(mask.shape) == tuple(old.shape), "pass the [b, G, T] response mask"
        mask = mask.bool()
        for group in range(old.shape[0]):
            found = any(torch.equal(mask[group], out.mask[b].bool()) and
                        torch.allclose(old[group][mask[group]], expected[b][mask[group]], rtol=1e-4, atol=1e-5)
                        for b in range(out.mask.shape[0]))
            assert found, (f"loss call {number + 1}: old_policy_logprobs are not the log-probs of the policy before "
                           f"this step: take log pi_old once per batch, before any optimizer step, and reuse them "
                           f"(recomputing them after an update makes the ratio 1 and the clip useless)")
        moved = max(moved, float(((new - old).abs() * mask).max()))
    assert moved > 1e-4, ("pi_theta never moved away from pi_old within the step: with num_iterations=2 and "
                          "num_minibatches=2 the later minibatches must see the earlier updates (ratio != 1)")


@pytest.mark.points(2)
def test_num_iterations_times_minibatches_steps(grpo_trainer, grpo_loss):
    """num_iterations passes over the batch, num_minibatches optimizer steps each."""
    require_loss(grpo_loss)
    for iterations, minibatches in ((3, 2), (1, 4)):
        _, _, _, _, _, recorder, counter, _ = _recorded_step(grpo_trainer, num_iterations=iterations,
                                                             num_minibatches=minibatches)
        assert counter.count == iterations * minibatches, (
            f"num_iterations={iterations}, num_minibatches={minibatches}: {counter.count} optimizer steps, expected "
            f"{iterations * minibatches} (one step per minibatch of whole groups, every pass)")
        rows = sorted(recorded(call, "policy_logprobs")[0].shape[0] for call in recorder.calls)
        assert sum(rows) == 4 * iterations, (f"the minibatches of {iterations} passes cover {sum(rows)} groups, "
                                             f"expected {iterations} x B = {4 * iterations}")


@pytest.mark.points(2)
def test_gradients_cleared_before_each_backward(grpo_trainer, grpo_loss):
    """Each minibatch step uses its own gradient, not the sum of every earlier minibatch's."""
    require_loss(grpo_loss)
    _, _, _, _, _, recorder, counter, _ = _recorded_step(grpo_trainer, num_iterations=2, num_minibatches=2)
    assert recorder.backwards == counter.count == 4, (f"{recorder.backwards} backward passes and {counter.count} "
                                                      f"optimizer steps, expected 4 of each (one per minibatch)")
    assert recorder.dirty_backward == 0, (f"{recorder.dirty_backward} backward passes started with old gradients "
                                          f"still in the parameters: call optimizer.zero_grad() before each backward")


@pytest.mark.points(1)
def test_gradient_norm_clipped(grpo_trainer, grpo_loss):
    """max_grad_norm bounds the gradient norm each optimizer step sees."""
    require_loss(grpo_loss)
    model = tiny_gpt(7)
    trainer = make_trainer(grpo_trainer, model, group_size=4, max_grad_norm=1e-3, reward_kind="partial",
                           optimizer=torch.optim.SGD(model.parameters(), lr=1e-3), task=ToyTask(max_new_tokens=3))
    counter = StepCounter(trainer.optimizer, model.parameters())
    trainer.training_step(toy_batch(4))
    assert counter.count > 0, "no optimizer step was taken"
    assert max(counter.norms) <= 1e-3 * (1 + 1e-3), (
        f"gradient norm {max(counter.norms):.3g} reached the optimizer with max_grad_norm=1e-3: call "
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm) between backward and step")


@pytest.mark.points(2)
def test_kl_beta_zero_never_calls_reference(grpo_trainer, grpo_loss):
    """With kl_beta = 0 the KL term is off: a whole training step must not touch the reference model."""
    require_loss(grpo_loss)
    trainer = make_trainer(grpo_trainer, tiny_gpt(8), RaisingModel(), group_size=4, kl_beta=0.0,
                           reward_kind="partial", task=ToyTask(max_new_tokens=3))
    metrics = trainer.training_step(toy_batch(4))
    assert isinstance(metrics, dict), f"training_step returned {type(metrics).__name__}, expected a dict of metrics"


@pytest.mark.points(3)
def test_training_raises_the_best_answer(grpo_trainer, grpo_loss):
    """A one-token problem with one best answer ("7"): five GRPO steps make it several times more likely."""
    require_loss(grpo_loss)
    model = tiny_gpt(9)
    trainer = make_trainer(grpo_trainer, model, group_size=8, seed=9, task=ToyTask(max_new_tokens=1),
                           optimizer=torch.optim.Adam(model.parameters(), lr=0.01))
    batch = Batch(toy_prompts(4), torch.tensor([[DIGIT[7]]] * 4))
    target = batch.answers.unsqueeze(1)   # [B, 1, 1]: the best completion of every prompt

    def probability():
        return policy_logprobs(model, batch.prompts, target, 1).exp().mean().item()

    before = probability()
    for _ in range(5):
        trainer.training_step(batch)
    after = probability()
    assert after > 4 * before, (
        f"after 5 GRPO steps the best answer's probability went from {before:.4f} to {after:.4f}: expected at least "
        f"a 4-fold rise (check the sign of the advantages and that each step applies the update)")
