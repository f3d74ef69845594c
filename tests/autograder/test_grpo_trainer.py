"""Graded tests of the GRPO trainer exercise (exercises/grpo_trainer.py).

Each test judges one thing. The update tests call update_policy directly on a hand-made batch; the
training_step tests replace the rollout with hand-made completions (through the trainer's own
generate_group_outputs, which is given), so that every sample can be told apart by its length: sample s of
the batch (s = b * G + g) has s + 1 response tokens. Recorders (tests/autograder/toys.py) watch the loss, the
optimizer and the reference model. Reference values come from the models themselves, recomputed here, and
from hand-checked cases; nothing is imported from solutions/.

The trainer runs your own GRPOLoss: every test that trains first checks it on a hand-checked case and, if it
is not right, fails with "finish grpo_loss first" / "fix grpo_loss first".
"""
import copy

import pytest
import torch

from tests.autograder.snapshots import assert_close, is_close
from tests.autograder.toys import (DIGIT, Batch, CountingModel, LossRecorder, RaisingModel, StepCounter, ToyTask,
                                   all_finite, assert_nonfinite_counted, logprobs_of, record_rollouts,
                                   require_grpo_loss, tiny_gpt, toy_batch, toy_prompts)
from training.rewards import REWARDS
from training.tokenizer import EOS_ID, PAD_ID

GROUP = 2     # samples per prompt in the hand-made batches
PROMPTS = 4   # prompts per hand-made batch: 8 samples of lengths 1..8


# ---------------------------------------------------------------------------------------------- set-up
def make_trainer(grpo_trainer, model=None, ref_model=None, *, group_size=GROUP, kl_beta=0.0, seed=0, lr=0.05,
                 **options):
    """A trainer on a tiny model with an Adam optimizer; the reference (when not given) is a working model that
    counts its calls, so that calling it when kl_beta == 0 costs only the test that checks that."""
    model = model if model is not None else tiny_gpt(seed)
    ref_model = ref_model if ref_model is not None else CountingModel(tiny_gpt(seed + 100))
    options.setdefault("task", ToyTask(max_new_tokens=PROMPTS * GROUP))
    options.setdefault("generator", torch.Generator().manual_seed(seed))
    options.setdefault("optimizer", torch.optim.Adam(model.parameters(), lr=lr))
    options.setdefault("reward_kind", "partial")
    return grpo_trainer.GRPOTrainer(model, ref_model, group_size, 0.2, kl_beta, **options)


def hand_made_outputs(grpo_trainer, model, prompts, group_size=GROUP, temperature=1.0, seed=0):
    """GroupOutputs [B, G, T] with sample s = b * G + g of length s + 1 (EOS last, PAD after), log pi_old from
    `model` at `temperature`. Sample 0 of each group starts with 7 (the toy answer), the others do not."""
    batch_size = prompts.shape[0]
    length = batch_size * group_size
    digits = torch.randint(0, 10, (batch_size, group_size, length), generator=torch.Generator().manual_seed(seed))
    digits[:, 0, 0] = 7
    digits[:, 1:, 0] = torch.where(digits[:, 1:, 0] == 7, 3, digits[:, 1:, 0])
    completions = torch.full((batch_size, group_size, length), PAD_ID, dtype=torch.long)
    mask = torch.zeros(batch_size, group_size, length)
    for b in range(batch_size):
        for g in range(group_size):
            n = b * group_size + g + 1
            completions[b, g, : n - 1] = torch.tensor([DIGIT[int(d)] for d in digits[b, g, : n - 1]], dtype=torch.long)
            completions[b, g, n - 1] = EOS_ID
            mask[b, g, :n] = 1.0
    logprobs = logprobs_of(model, prompts, completions, temperature) * mask
    return grpo_trainer.GroupOutputs(completions, logprobs, mask)


def use_hand_made_rollout(trainer, grpo_trainer, prompts, seed=0):
    """Make trainer.generate_group_outputs return the hand-made batch; returns (outputs, list of calls)."""
    outputs = hand_made_outputs(grpo_trainer, trainer.model, prompts, trainer.group_size, trainer.temperature, seed)
    calls = []

    def rollout(given_prompts, *args, **kwargs):
        calls.append(given_prompts)
        return outputs

    trainer.generate_group_outputs = rollout
    return outputs, calls


def sample_ids(mask: torch.Tensor) -> torch.Tensor:
    """[..., G, T] mask -> [..., G] sample numbers (a sample's length - 1)."""
    return mask.sum(dim=-1).round().long() - 1


def rows_of(call_mask, outputs):
    """[(call group, g, b, g_in_batch)] for every sample of a loss call, found by its length."""
    ids = sample_ids(call_mask)
    group_size = outputs.mask.shape[1]
    return [(i, g, int(ids[i, g]) // group_size, int(ids[i, g]) % group_size)
            for i in range(ids.shape[0]) for g in range(ids.shape[1])]


def logprobs_blame(trainer) -> str:
    """A hint when the trainer's own policy_logprobs is wrong (it is judged by its own test), else ""."""
    model, prompts = tiny_gpt(11), toy_prompts(2)
    completions = torch.randint(4, 14, (2, GROUP, 3), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            theirs = trainer.policy_logprobs(model, prompts, completions)
        if is_close(theirs, logprobs_of(model, prompts, completions, trainer.temperature)):
            return ""
    except Exception:  # noqa: BLE001 - a helper that raises is blamed the same way
        pass
    return (" (your policy_logprobs does not give each sample's log-probs after its own prompt at "
            "self.temperature: fix it first, see test_policy_logprobs_of_a_group_batch)")


def distinct_advantages(batch_size=PROMPTS, group_size=GROUP):
    """[B, G] advantages, all different: (s + 1) / 10 with alternating sign, s the sample number."""
    s = torch.arange(batch_size * group_size, dtype=torch.float32).view(batch_size, group_size)
    return (s + 1) / 10 * torch.where(s % 2 == 0, 1.0, -1.0)


def update_on_hand_made_batch(grpo_trainer, grpo_loss, *, num_iterations=2, num_minibatches=2, seed=3, lr=0.05,
                              poison=None, global_seed=None, **options):
    """update_policy called directly on a hand-made batch; returns what the test needs to look at."""
    require_grpo_loss(grpo_loss)
    model = tiny_gpt(seed)
    trainer = make_trainer(grpo_trainer, model, seed=seed, lr=lr, num_iterations=num_iterations,
                           num_minibatches=num_minibatches, **options)
    prompts = toy_prompts(PROMPTS)
    outputs = hand_made_outputs(grpo_trainer, model, prompts, seed=seed)
    advantages = distinct_advantages()
    recorder = LossRecorder(trainer.grpo_loss, model, poison=poison, keep_weights=True)
    trainer.grpo_loss = recorder
    steps = StepCounter(trainer.optimizer, model.parameters())
    pi_old = copy.deepcopy(model)
    if global_seed is not None:
        torch.manual_seed(global_seed)
    metrics = trainer.update_policy(prompts, outputs, advantages, outputs.logprobs.clone(), None)
    return dict(trainer=trainer, model=model, pi_old=pi_old, prompts=prompts, outputs=outputs, advantages=advantages,
                recorder=recorder, steps=steps, metrics=metrics)


def step_on_hand_made_batch(grpo_trainer, grpo_loss, *, seed=6, kl_beta=0.0, temperature=1.0, rewards=None,
                            **options):
    """One training_step on hand-made completions; returns what the test needs to look at.
    rewards: [B, G] that the trainer's compute_rewards returns instead of scoring (to test what follows)."""
    require_grpo_loss(grpo_loss)
    model = tiny_gpt(seed)
    ref_inner = tiny_gpt(seed + 100)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    steps = StepCounter(optimizer, model.parameters())
    ref = CountingModel(ref_inner, clock=lambda: steps.count)
    trainer = make_trainer(grpo_trainer, model, ref, seed=seed, kl_beta=kl_beta, temperature=temperature,
                           optimizer=optimizer, **options)
    batch = toy_batch(PROMPTS)
    if rewards is not None:
        trainer.compute_rewards = lambda answers, completions, kind=None: rewards.clone()
    outputs, rollouts = use_hand_made_rollout(trainer, grpo_trainer, batch.prompts, seed=seed)
    advantages_calls = []
    compute_advantages = trainer.compute_advantages

    def recorded_advantages(rewards, outputs):
        result = compute_advantages(rewards, outputs)
        advantages_calls.append((rewards.detach().clone(), outputs, result.detach().clone()))
        return result

    trainer.compute_advantages = recorded_advantages
    recorder = LossRecorder(trainer.grpo_loss, model)
    trainer.grpo_loss = recorder
    pi_old = copy.deepcopy(model)
    metrics = trainer.training_step(batch)
    return dict(trainer=trainer, model=model, pi_old=pi_old, ref=ref, ref_inner=ref_inner, batch=batch,
                outputs=outputs, rollouts=rollouts, advantages_calls=advantages_calls, recorder=recorder,
                steps=steps, metrics=metrics)


# ---------------------------------------------------------------------------------------------- rewards
@pytest.mark.points(2)
def test_compute_rewards_scores_each_sample_against_its_prompts_answer(grpo_trainer):
    """Sample g of prompt b is scored against answer b; rewards are [B, G]."""
    d, eos, pad = DIGIT, EOS_ID, PAD_ID
    answers = torch.tensor([[d[1], d[2], eos], [d[5], d[5], eos]])
    completions = torch.tensor([
        [[d[1], d[2], eos, pad], [d[5], d[5], eos, pad], [d[1], d[3], eos, pad]],    # right, other's answer, half
        [[d[5], d[5], eos, pad], [d[1], d[2], eos, pad], [d[5], d[5], d[5], eos]],   # right, other's, too long
    ])
    rewards = make_trainer(grpo_trainer, group_size=3, reward_kind="exact").compute_rewards(answers, completions)
    assert tuple(rewards.shape) == (2, 3), f"rewards shape {tuple(rewards.shape)}, expected [B, G] = (2, 3)"
    tiled = REWARDS["exact"](completions.reshape(6, 4), answers.repeat(3, 1)).view(2, 3)
    if is_close(rewards, tiled):
        pytest.fail("samples were scored against another prompt's answer: the answers were tiled (a0 a1 a0 a1 ..., "
                    "as answers.repeat(G, 1) does) while the samples of a group are adjacent (prompt b's G samples, "
                    "then prompt b+1's): repeat each answer G times in a row")
    assert_close(rewards, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], "exact-match rewards",
                 "score every sample with self.task.reward against its own prompt's answer")


@pytest.mark.points(1)
def test_compute_rewards_uses_the_reward_kind(grpo_trainer):
    """reward_kind decides the rule; kind="exact" asks for exact match whatever the trainer trains on."""
    d, eos, pad = DIGIT, EOS_ID, PAD_ID
    answers = torch.tensor([[d[1], d[2], eos]] * 2)   # one answer for both prompts: only the kind matters here
    completions = torch.tensor([[[d[1], d[2], eos, pad], [d[1], d[3], eos, pad]],
                                [[d[4], d[2], eos, pad], [d[1], d[2], d[2], eos]]])
    trainer = make_trainer(grpo_trainer, group_size=2, reward_kind="partial")
    assert_close(trainer.compute_rewards(answers, completions), [[1.0, 2 / 3], [2 / 3, 2 / 3]],
                 "partial-credit rewards (reward_kind='partial')", "pass kind=self.reward_kind to self.task.reward")
    assert_close(trainer.compute_rewards(answers, completions, kind="exact"), [[1.0, 0.0], [0.0, 0.0]],
                 "compute_rewards(..., kind='exact')", "a kind given to compute_rewards overrides self.reward_kind")


# ---------------------------------------------------------------------------------------------- log-probs
@pytest.mark.points(2)
def test_policy_logprobs_of_a_group_batch(grpo_trainer):
    """policy_logprobs: [b, G, T] log-probs of each sample after ITS prompt, with gradient; entropy on request."""
    model = tiny_gpt(1)
    trainer = make_trainer(grpo_trainer, model, group_size=2)
    prompts = toy_prompts(3)
    completions = torch.randint(4, 14, (3, 2, 4), generator=torch.Generator().manual_seed(0))
    logprobs = trainer.policy_logprobs(model, prompts, completions)
    assert tuple(logprobs.shape) == (3, 2, 4), f"shape {tuple(logprobs.shape)}, expected [b, G, T] = (3, 2, 4)"
    assert logprobs.requires_grad, "policy_logprobs carry no gradient: the update needs them with autograd on"
    expected = logprobs_of(model, prompts, completions)
    tiled_prompts = prompts[torch.arange(6) % 3]   # what prompts.repeat(G, 1) pairs with the flat samples
    tiled = logprobs_of(model, tiled_prompts, completions.reshape(6, 4)).view(3, 2, 4)
    if not is_close(logprobs, expected) and is_close(logprobs, tiled):
        pytest.fail("samples were read after another prompt: sample g of group i continues prompt i, so each "
                    "prompt is repeated G times in a row, not tiled")
    assert_close(logprobs, expected, "grouped log-probs",
                 "one sequence_logprobs pass over the b * G rows, each after its own prompt, viewed as [b, G, T]")
    both = trainer.policy_logprobs(model, prompts, completions, with_entropy=True)
    assert isinstance(both, tuple) and len(both) == 2, "with_entropy=True returns (logprobs, entropy)"
    assert tuple(both[1].shape) == (3, 2, 4), f"entropy shape {tuple(both[1].shape)}, expected [b, G, T]"
    assert_close(both[0], expected, "log-probs returned with the entropy")


# ---------------------------------------------------------------------------------------------- training_step
@pytest.mark.points(2)
def test_training_step_returns_the_metrics(grpo_trainer, grpo_loss):
    """training_step returns a dict of floats describing the rollout and the update."""
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, kl_beta=0.1, num_iterations=2, num_minibatches=2)
    metrics, outputs = run["metrics"], run["outputs"]
    assert isinstance(metrics, dict), f"training_step returned {type(metrics).__name__}, expected a dict"
    required = ("reward_mean", "solved", "response_length", "zero_std_fraction", "groups_kept", "loss",
                "optimizer_steps", "nonfinite_losses", "clip_fraction", "entropy", "grad_norm", "kl")
    missing = [key for key in required if key not in metrics]
    assert not missing, f"training_step's metrics lack {missing}"
    for key in required:
        value = metrics[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"metrics[{key!r}] is {type(value).__name__}, expected a float (.item() a tensor)")
    rewards = run["trainer"].compute_rewards(run["batch"].answers, outputs.completions)   # judged by its own tests
    exact = run["trainer"].compute_rewards(run["batch"].answers, outputs.completions, kind="exact")
    assert_close(metrics["reward_mean"], rewards.mean(), "metrics['reward_mean']",
                 "the mean task reward of the samples")
    assert_close(metrics["solved"], exact.mean(), "metrics['solved']",
                 "the share of samples exactly right (kind='exact', whatever the training reward is)")
    assert_close(metrics["response_length"], outputs.mask.sum(-1).mean(), "metrics['response_length']",
                 "the mean number of response tokens per sample")
    all_equal = (rewards.amax(dim=1) == rewards.amin(dim=1)).float().mean()
    assert_close(metrics["zero_std_fraction"], all_equal, "metrics['zero_std_fraction']",
                 "the share of groups whose rewards are all equal")
    assert_close(metrics["groups_kept"], PROMPTS, "metrics['groups_kept']", "every group is kept here")
    assert_close(metrics["optimizer_steps"], 4, "metrics['optimizer_steps']", "2 passes x 2 minibatches")
    assert_close(metrics["nonfinite_losses"], 0, "metrics['nonfinite_losses']")
    assert 0.0 <= metrics["clip_fraction"] <= 1.0 and metrics["entropy"] > 0 and metrics["grad_norm"] >= 0, (
        "clip_fraction must be in [0, 1], entropy > 0, grad_norm >= 0 (averages over the optimizer steps)")


@pytest.mark.points(3)
def test_advantages_come_from_compute_advantages(grpo_trainer, grpo_loss):
    """The advantages reach the loss only through self.compute_advantages(rewards, outputs), as advantages=,
    each with its own sample; with advantage_estimator="rloo" they are RLOO's."""
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, advantage_estimator="rloo")
    assert len(run["rollouts"]) == 1, (f"self.generate_group_outputs was called {len(run['rollouts'])} times, "
                                       f"expected once per training_step (the rollout comes only from it)")
    calls = run["advantages_calls"]
    assert len(calls) == 1, (f"self.compute_advantages was called {len(calls)} times, expected once: the advantages "
                             f"must come from it (a subclass may change them), not be computed in training_step")
    rewards, given_outputs, advantages = calls[0]
    expected_rewards = run["trainer"].compute_rewards(run["batch"].answers, run["outputs"].completions)
    assert_close(rewards, expected_rewards, "the rewards given to compute_advantages",
                 "pass the rewards of compute_rewards, [B, G]")
    assert torch.equal(given_outputs.completions, run["outputs"].completions), (
        "compute_advantages got other outputs than the rollout's: pass the GroupOutputs of generate_group_outputs")
    group_size = expected_rewards.shape[1]
    rloo = group_size / (group_size - 1) * (expected_rewards - expected_rewards.mean(1, keepdim=True))
    recorder = run["recorder"]
    assert recorder.calls, "training_step never called self.grpo_loss"
    for number in range(len(recorder.calls)):
        assert recorder.value(number, "rewards") is None, (
            "the loss got rewards=: give it advantages= (with rewards= it would centre them again in each group)")
        given = recorder.value(number, "advantages")
        assert given is not None, "the loss got no advantages=: pass the advantages of compute_advantages"
        for i, g, b, gb in rows_of(recorder.value(number, "response_mask"), run["outputs"]):
            assert_close(given[i, g], advantages[b, gb], f"loss call {number + 1}: advantage of sample {(b, gb)}",
                         "index the advantages with the same groups as the log-probs and the mask")
            assert_close(given[i, g], rloo[b, gb], f"loss call {number + 1}: RLOO advantage of sample {(b, gb)}",
                         "advantage_estimator='rloo' must reach the loss: use self.compute_advantages")


@pytest.mark.points(1)
def test_per_token_advantages_reach_the_loss(grpo_trainer, grpo_loss):
    """An estimator with one advantage per token ([B, G, T], REINFORCE++) reaches the loss unchanged."""
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, advantage_estimator="reinforce_plus_plus")
    assert len(run["advantages_calls"]) == 1, "self.compute_advantages must be called once per training_step"
    advantages = run["advantages_calls"][0][2]
    assert advantages.dim() == 3, "compute_advantages returned [B, G, T] advantages for reinforce_plus_plus"
    recorder = run["recorder"]
    assert recorder.calls, "training_step never called self.grpo_loss"
    for number in range(len(recorder.calls)):
        given, mask = recorder.value(number, "advantages"), recorder.value(number, "response_mask")
        assert given is not None and given.dim() == 3, (
            f"the loss got advantages of shape {None if given is None else tuple(given.shape)}, expected "
            f"[b, G, T]: pass per-token advantages as they are (index only the groups)")
        for i, g, b, gb in rows_of(mask, run["outputs"]):
            on = mask[i, g].bool()
            assert_close(given[i, g][on], advantages[b, gb][on], f"loss call {number + 1}: per-token advantages of "
                         f"sample {(b, gb)}", "index the advantages with the same groups as the log-probs")


@pytest.mark.points(3)
def test_old_logprobs_taken_before_any_update(grpo_trainer, grpo_loss):
    """Every minibatch of every pass compares pi_theta with the SAME pi_old: the policy before this step."""
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=2, num_minibatches=2)
    recorder, outputs = run["recorder"], run["outputs"]
    assert len(recorder.calls) >= 2, f"{len(recorder.calls)} loss calls, expected 4 (2 passes x 2 minibatches)"
    expected = logprobs_of(run["pi_old"], run["batch"].prompts, outputs.completions)
    for number in range(len(recorder.calls)):
        old, old_grad = recorder.calls[number]["old_policy_logprobs"]
        assert not old_grad, "old_policy_logprobs carry a gradient: log pi_old is a constant of the step"
        mask = recorder.value(number, "response_mask")
        for i, g, b, gb in rows_of(mask, outputs):
            on = mask[i, g].bool()
            if not is_close(old[i, g][on], expected[b, gb][on]):
                pytest.fail(f"loss call {number + 1}: old_policy_logprobs of sample {(b, gb)} are not the log-probs "
                            f"of the policy before this step: take log pi_old once per batch, before any optimizer "
                            f"step (the rollout's log-probs, or one pass without gradient), and reuse them; taken "
                            f"again after an update they make the ratio 1 and the clip useless")


@pytest.mark.points(2)
def test_reference_pass_once_before_any_update(grpo_trainer, grpo_loss):
    """kl_beta > 0: the reference model sees every sample once per step (in one call or several), without
    gradient, before the first optimizer step, and its log-probs reach the loss."""
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, kl_beta=0.1, num_iterations=2, num_minibatches=2)
    ref, outputs, recorder = run["ref"], run["outputs"], run["recorder"]
    rows = PROMPTS * GROUP
    assert ref.rows == rows, (f"the reference model read {ref.rows} rows in one training_step, expected B*G = {rows}: "
                              f"compute log pi_ref once per batch, before the updates, not per minibatch or pass")
    assert not any(call["grad"] for call in ref.calls), "the reference pass ran with autograd on: use torch.no_grad()"
    assert all(call["clock"] == 0 for call in ref.calls), (
        "the reference model ran after an optimizer step: compute log pi_ref before any update")
    expected = logprobs_of(run["ref_inner"], run["batch"].prompts, outputs.completions)
    assert recorder.calls, "training_step never called self.grpo_loss"
    for number in range(len(recorder.calls)):
        ref_logp, ref_grad = recorder.calls[number]["reference_logprobs"]
        assert ref_logp is not None, "kl_beta > 0 but the loss got reference_logprobs=None"
        assert not ref_grad, "the reference log-probs carry a gradient"
        mask = recorder.value(number, "response_mask")
        for i, g, b, gb in rows_of(mask, outputs):
            on = mask[i, g].bool()
            if not is_close(ref_logp[i, g][on], expected[b, gb][on]):
                pytest.fail(f"loss call {number + 1}: the reference log-probs of sample {(b, gb)} are not the "
                            f"reference model's: log pi_ref of each sample after its own prompt, indexed like the "
                            f"rest{logprobs_blame(run['trainer'])}")


@pytest.mark.points(2)
def test_kl_beta_zero_never_calls_the_reference(grpo_trainer, grpo_loss):
    """With kl_beta = 0 the KL term is off: a whole training step must not run the reference model."""
    require_grpo_loss(grpo_loss)
    trainer = make_trainer(grpo_trainer, tiny_gpt(8), RaisingModel(), kl_beta=0.0, task=ToyTask(max_new_tokens=3))
    metrics = trainer.training_step(toy_batch(4))
    assert isinstance(metrics, dict), f"training_step returned {type(metrics).__name__}, expected a dict of metrics"


@pytest.mark.points(2)
def test_temperature_in_every_logprob_pass(grpo_trainer, grpo_loss):
    """At temperature 0.5, log pi_old, log pi_ref and the update's log pi_theta are all taken at 0.5."""
    temperature = 0.5
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, kl_beta=0.1, temperature=temperature,
                                  num_iterations=1, num_minibatches=1)
    recorder, outputs, prompts = run["recorder"], run["outputs"], run["batch"].prompts
    assert recorder.calls, "training_step never called self.grpo_loss"
    expected = {"old_policy_logprobs": logprobs_of(run["pi_old"], prompts, outputs.completions, temperature),
                "reference_logprobs": logprobs_of(run["ref_inner"], prompts, outputs.completions, temperature),
                "policy_logprobs": logprobs_of(run["pi_old"], prompts, outputs.completions, temperature)}
    names = {"old_policy_logprobs": "log pi_old", "reference_logprobs": "log pi_ref",
             "policy_logprobs": "the update's log pi_theta (first minibatch, before any step)"}
    mask = recorder.value(0, "response_mask")
    for name, reference in expected.items():
        given = recorder.value(0, name)
        assert given is not None, f"the loss got {name}=None"
        for i, g, b, gb in rows_of(mask, outputs):
            on = mask[i, g].bool()
            if not is_close(given[i, g][on], reference[b, gb][on]):
                pytest.fail(f"{names[name]} of sample {(b, gb)} is not at the sampling temperature {temperature}: "
                            f"every log-prob of the step divides the logits by self.temperature, as the rollout did"
                            f"{logprobs_blame(run['trainer'])}")


@pytest.mark.points(2)
def test_dynamic_sampling_drops_groups_with_equal_rewards(grpo_trainer, grpo_loss):
    """dynamic_sampling=True: groups whose rewards are all equal never reach the update."""
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.5, 0.0]])   # groups 0 and 1: all equal
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, dynamic_sampling=True, rewards=rewards)
    recorder, metrics = run["recorder"], run["metrics"]
    assert recorder.calls, "no loss call: the groups of prompts 2 and 3 have different rewards and must be trained on"
    seen = {b for number in range(len(recorder.calls))
            for _, _, b, _ in rows_of(recorder.value(number, "response_mask"), run["outputs"])}
    assert seen == {2, 3}, (f"the update saw the groups of prompts {sorted(seen)}, expected [2, 3]: with "
                            f"dynamic_sampling drop the groups whose rewards are all equal "
                            f"(loss.keep_informative_groups) before the update")
    assert_close(metrics.get("groups_kept", float("nan")), 2.0, "metrics['groups_kept']", "2 of 4 groups are kept")
    assert_close(metrics.get("zero_std_fraction", float("nan")), 0.5, "metrics['zero_std_fraction']",
                 "half the groups have rewards all equal")


@pytest.mark.points(1)
def test_dynamic_sampling_with_no_group_left(grpo_trainer, grpo_loss):
    """When every group is dropped there is nothing to learn: no optimizer step, loss None."""
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.5], [1.0, 1.0]])
    run = step_on_hand_made_batch(grpo_trainer, grpo_loss, dynamic_sampling=True, rewards=rewards)
    assert run["steps"].count == 0, f"{run['steps'].count} optimizer steps with every group dropped, expected 0"
    assert run["metrics"].get("loss", "missing") is None, "metrics['loss'] must be None when no step was taken"
    assert run["metrics"].get("optimizer_steps") == 0, "metrics['optimizer_steps'] must be 0"


# ---------------------------------------------------------------------------------------------- update_policy
@pytest.mark.points(2)
def test_minibatches_hold_whole_groups(grpo_trainer, grpo_loss):
    """Each minibatch holds whole groups (a group's samples are compared with each other), and each pass
    covers every group once; any split of whole groups is fine."""
    run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=2, num_minibatches=2)
    recorder, outputs = run["recorder"], run["outputs"]
    assert recorder.calls, "update_policy never called self.grpo_loss"
    seen = []
    for number in range(len(recorder.calls)):
        mask = recorder.value(number, "response_mask")
        assert mask is not None and mask.dim() == 3 and mask.shape[1] == GROUP, (
            f"loss call {number + 1}: response_mask of shape {None if mask is None else tuple(mask.shape)}, "
            f"expected [b, G, T] with G = {GROUP}")
        for row in sample_ids(mask):
            prompts_of_row = {int(s) // GROUP for s in row}
            assert len(prompts_of_row) == 1, (
                f"loss call {number + 1}: a group row mixes samples of prompts {sorted(prompts_of_row)}: split "
                f"the batch into minibatches of whole groups (shuffle the B groups, not the B*G samples)")
            seen.append(prompts_of_row.pop())
    assert sorted(seen) == sorted(list(range(PROMPTS)) * 2), (
        f"over 2 passes the minibatches held the groups {sorted(seen)}: each pass covers every group once")


@pytest.mark.points(1)
def test_each_pass_shuffles_the_groups_with_the_trainers_generator(grpo_trainer, grpo_loss):
    """Every pass draws a fresh order of the groups, from self.generator (same seed, same minibatches)."""
    def minibatches(global_seed):
        run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=6, num_minibatches=2, lr=0.0,
                                        global_seed=global_seed)
        return [tuple(sorted(int(s) // GROUP for s in sample_ids(run["recorder"].value(n, "response_mask"))[:, 0]))
                for n in range(len(run["recorder"].calls))]

    first = minibatches(1)
    assert len(first) == 12, f"{len(first)} loss calls, expected 12 (6 passes x 2 minibatches)"
    passes = [tuple(first[2 * p: 2 * p + 2]) for p in range(6)]
    assert len(set(passes)) > 1, ("the 6 passes used the same minibatches: shuffle the groups afresh at every pass "
                                  "(torch.randperm with self.generator)")
    assert minibatches(2) == first, ("the same trainer seed gave other minibatches: shuffle with "
                                     "generator=self.generator, not the global random stream")


@pytest.mark.points(2)
def test_one_optimizer_step_per_minibatch(grpo_trainer, grpo_loss):
    """num_iterations passes x num_minibatches optimizer steps, each after the backward of one minibatch's loss."""
    for iterations, minibatches in ((3, 2), (1, 4)):
        run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=iterations,
                                        num_minibatches=minibatches)
        expected = iterations * minibatches
        assert run["steps"].count == expected, (
            f"num_iterations={iterations}, num_minibatches={minibatches}: {run['steps'].count} optimizer steps, "
            f"expected {expected}: one step per minibatch (not one per pass), every pass")
        assert len(run["recorder"].calls) == expected == run["recorder"].backwards, (
            f"{len(run['recorder'].calls)} loss calls and {run['recorder'].backwards} backward passes, expected "
            f"{expected} of each: one loss and one backward per minibatch")


@pytest.mark.points(2)
def test_gradients_cleared_before_each_backward(grpo_trainer, grpo_loss):
    """Each minibatch step uses its own gradient, not the sum of every earlier minibatch's."""
    run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=2, num_minibatches=2)
    recorder = run["recorder"]
    assert recorder.backwards >= 2, f"{recorder.backwards} backward passes, expected 4"
    assert recorder.dirty_backward == 0, (f"{recorder.dirty_backward} backward passes started with old gradients "
                                          f"still in the parameters: zero the gradients before each backward")


@pytest.mark.points(1)
def test_gradient_norm_clipped(grpo_trainer, grpo_loss):
    """max_grad_norm bounds the gradient norm each optimizer step sees."""
    run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=1, num_minibatches=2, max_grad_norm=1e-3)
    norms = run["steps"].norms
    assert norms, "no optimizer step was taken"
    assert max(norms) <= 1e-3 * (1 + 1e-3), (
        f"gradient norm {max(norms):.3g} reached the optimizer with max_grad_norm=1e-3: clip the gradient norm "
        f"(torch.nn.utils.clip_grad_norm_) between backward and step")


@pytest.mark.points(2)
def test_each_minibatch_runs_the_current_policy(grpo_trainer, grpo_loss):
    """Each minibatch's log pi_theta comes from one forward pass with gradient of the policy as it is at that
    minibatch (after the earlier steps), so the ratio pi_theta / pi_old moves within the step."""
    run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=2, num_minibatches=2)
    recorder, outputs, prompts = run["recorder"], run["outputs"], run["prompts"]
    assert len(recorder.calls) == 4, f"{len(recorder.calls)} loss calls, expected 4 (2 passes x 2 minibatches)"
    current = tiny_gpt(0)
    for number, state in enumerate(recorder.weights):
        logp, logp_grad = recorder.calls[number]["policy_logprobs"]
        assert logp_grad, "the policy log-probs given to the loss carry no gradient: compute them with autograd on"
        current.load_state_dict(state)
        expected = logprobs_of(current, prompts, outputs.completions)
        mask = recorder.value(number, "response_mask")
        for i, g, b, gb in rows_of(mask, outputs):
            on = mask[i, g].bool()
            if not is_close(logp[i, g][on], expected[b, gb][on]):
                pytest.fail(f"loss call {number + 1}: log pi_theta of sample {(b, gb)} is not the policy's as it is "
                            f"now: run the forward pass for each minibatch, after the previous optimizer step"
                            f"{logprobs_blame(run['trainer'])}")


@pytest.mark.points(2)
def test_nonfinite_loss_skipped_and_counted(grpo_trainer, grpo_loss):
    """A loss that is NaN or inf is not stepped on (the weights stay finite) and is counted."""
    run = update_on_hand_made_batch(grpo_trainer, grpo_loss, num_iterations=2, num_minibatches=2,
                                    poison={2: float("nan"), 3: float("inf")})
    assert len(run["recorder"].calls) == 4, f"{len(run['recorder'].calls)} loss calls, expected 4"
    assert all_finite(run["model"]), "the weights hold NaN or inf: a non-finite loss was stepped on; skip it"
    assert run["steps"].count == 2, (f"{run['steps'].count} optimizer steps with 2 of 4 losses NaN/inf, expected 2: "
                                     f"skip the step of a loss that is not finite, take the others")
    assert_nonfinite_counted(run["metrics"])


# ---------------------------------------------------------------------------------------------- it learns
@pytest.mark.points(3)
def test_training_raises_the_best_answer(grpo_trainer, grpo_loss):
    """A one-token problem with one best answer ("7"): five GRPO steps make it several times more likely."""
    require_grpo_loss(grpo_loss)
    model = tiny_gpt(9)
    trainer = make_trainer(grpo_trainer, model, group_size=8, seed=9, lr=0.01, reward_kind="exact",
                           task=ToyTask(max_new_tokens=1))
    batch = Batch(toy_prompts(4), torch.tensor([[DIGIT[7]]] * 4))
    target = batch.answers.unsqueeze(1)   # [B, 1, 1]: the best completion of every prompt

    def probability():
        return logprobs_of(model, batch.prompts, target).exp().mean().item()

    before = probability()
    for _ in range(5):
        trainer.training_step(batch)
    after = probability()
    assert after > 4 * before, (
        f"after 5 GRPO steps the best answer's probability went from {before:.4f} to {after:.4f}: expected at least "
        f"a 4-fold rise (check the sign of the advantages and that each step applies the update)")
