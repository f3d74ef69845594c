"""Graded tests of the PPO trainer exercise (exercises/ppo_trainer.py).

Each test judges one thing. A one-layer, 16-wide GPT is the actor and a value model of the same size the
critic, seeded, on CPU. The update tests call update_policy directly on hand-made experiences in which every
row can be told apart by its length (row i has i + 1 response tokens). Reference values: hand-built rewards,
values and masks (GAE computed here by its definition), the networks' own outputs recomputed here, and
properties; nothing is imported from solutions/.

The trainer runs your own compute_gae and PPOLoss: every test that needs them first checks them on
hand-checked cases and, if they are not right, fails with "finish ppo_loss first" / "fix ppo_loss first".
"""
import copy

import pytest
import torch

from tests.autograder.snapshots import assert_close, is_close
from tests.autograder.toys import (DIGIT, CountingModel, LossRecorder, RaisingModel, StepCounter, ToyTask, all_finite,
                                   assert_nonfinite_counted, logprobs_of, record_rollouts, require_ppo_loss, tiny_critic,
                                   tiny_gpt, toy_batch, toy_prompts)
from training.model import ValueModel
from training.rewards import REWARDS
from training.rl_metrics import explained_variance
from training.rollout import values_for
from training.tokenizer import EOS_ID, PAD_ID

ROWS = 8   # rows of the hand-made experiences: lengths 1..8


# ---------------------------------------------------------------------------------------------- set-up
def make_trainer(ppo_trainer, actor=None, critic=None, ref_model=None, *, gamma=1.0, lam=0.95, seed=0, lr=0.01,
                 **options):
    """A trainer with Adam optimizers; the reference (when not given) is a working model that counts its calls,
    so that calling it when kl_beta == 0 costs only the test that checks that."""
    actor = actor if actor is not None else tiny_gpt(seed)
    critic = critic if critic is not None else tiny_critic(seed)
    ref_model = ref_model if ref_model is not None else CountingModel(tiny_gpt(seed + 100))
    options.setdefault("task", ToyTask())
    options.setdefault("generator", torch.Generator().manual_seed(seed))
    options.setdefault("optimizer", torch.optim.Adam(actor.parameters(), lr=lr))
    options.setdefault("critic_optimizer", torch.optim.Adam(critic.parameters(), lr=lr))
    options.setdefault("reward_kind", "partial")
    return ppo_trainer.PPOTrainer(actor, critic, ref_model, 0.2, gamma, lam, **options)


def hand_made_experiences(actor, critic, temperature=1.0, seed=0) -> dict:
    """Experiences of ROWS rows, row i with i + 1 response tokens (EOS last, PAD after): log pi_old from the
    actor at `temperature`, values from the critic, and advantages and returns all different."""
    generator = torch.Generator().manual_seed(seed)
    prompts = toy_prompts(ROWS)
    completions = torch.full((ROWS, ROWS), PAD_ID, dtype=torch.long)
    mask = torch.zeros(ROWS, ROWS)
    for i in range(ROWS):
        digits = torch.randint(0, 10, (i,), generator=generator)
        completions[i, :i] = torch.tensor([DIGIT[int(d)] for d in digits], dtype=torch.long)
        completions[i, i] = EOS_ID
        mask[i, : i + 1] = 1.0
    with torch.no_grad():
        values = values_for(critic, prompts, completions) * mask
    return dict(prompts=prompts, completions=completions, mask=mask,
                old_logprobs=logprobs_of(actor, prompts, completions, temperature) * mask,
                ref_logprobs=None, values=values, scores=torch.zeros(ROWS), rewards=torch.zeros(ROWS, ROWS),
                advantages=torch.randn(ROWS, ROWS, generator=generator) * mask,
                returns=torch.randn(ROWS, ROWS, generator=generator) * mask)


def row_ids(mask: torch.Tensor) -> list[int]:
    """The hand-made row of each row of a minibatch, found by its length."""
    return [int(n) - 1 for n in mask.sum(dim=-1).round().long()]


def update_on_hand_made_experiences(ppo_trainer, ppo_loss, *, num_epochs=2, num_minibatches=2, seed=4, lr=0.01,
                                    temperature=1.0, poison=None, global_seed=None, **options):
    """update_policy called directly on hand-made experiences; returns what the test needs to look at."""
    require_ppo_loss(ppo_loss)
    actor, critic = tiny_gpt(seed), tiny_critic(seed)
    trainer = make_trainer(ppo_trainer, actor, critic, seed=seed, lr=lr, num_epochs=num_epochs,
                           num_minibatches=num_minibatches, temperature=temperature, **options)
    experiences = hand_made_experiences(actor, critic, temperature, seed)
    recorder = LossRecorder(trainer.ppo_loss, actor, critic, poison=poison, keep_weights=True)
    trainer.ppo_loss = recorder
    actor_steps = StepCounter(trainer.actor_optimizer, actor.parameters())
    critic_steps = StepCounter(trainer.critic_optimizer, critic.parameters())
    pi_old = copy.deepcopy(actor)
    if global_seed is not None:
        torch.manual_seed(global_seed)
    metrics = trainer.update_policy(experiences)
    return dict(trainer=trainer, actor=actor, critic=critic, pi_old=pi_old, experiences=experiences,
                recorder=recorder, actor_steps=actor_steps, critic_steps=critic_steps, metrics=metrics)


def gae_by_definition(rewards, values, mask, gamma, lam):
    """A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l} over the response tokens, delta_t = r_t + gamma V_{t+1} - V_t."""
    n, t_max = rewards.shape
    advantages = torch.zeros(n, t_max, dtype=torch.float64)
    for i in range(n):
        length = int(mask[i].sum())
        v = [float(values[i, t]) for t in range(length)] + [0.0]
        deltas = [float(rewards[i, t]) + gamma * v[t + 1] - v[t] for t in range(length)]
        for t in range(length):
            advantages[i, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t))
    return advantages


ADVANTAGE_CASE = dict(
    mask=torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0]]),
    rewards=torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.1, 0.0, -0.2, 0.0, 0.5], [0.0, 2.0, 0.0, 0.0, 0.0]]),
    values=torch.tensor([[0.2, 0.4, 0.6, 9.0, 9.0], [0.0, 0.3, 0.1, -0.2, 0.4], [1.0, 1.5, 9.0, 9.0, 9.0]]),
)


# ---------------------------------------------------------------------------------------------- rewards
@pytest.mark.points(3)
def test_score_only_on_the_last_response_token(ppo_trainer):
    """kl_beta = 0: each row's reward is its score, on its last response token (the EOS), 0 elsewhere."""
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    scores = torch.tensor([0.5, 1.0, -2.0])
    logp = -torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    rewards = ppo_trainer.PPOTrainer.token_rewards(scores, logp, None, mask, 0.0)
    expected = torch.tensor([[0, 0, 0.5, 0], [1.0, 0, 0, 0], [0, 0, 0, -2.0]])
    assert tuple(rewards.shape) == (3, 4), f"rewards shape {tuple(rewards.shape)}, expected [N, T] = (3, 4)"
    if is_close(rewards, [[0.5, 0, 0, 0], [1.0, 0, 0, 0], [-2.0, 0, 0, 0]]):
        pytest.fail("the score sits on the FIRST response token: it belongs on the last one (where the mask's "
                    "ones end)")
    if is_close(rewards, [[0, 0, 0, 0.5], [0, 0, 0, 1.0], [0, 0, 0, -2.0]]):
        pytest.fail("the score sits in the last COLUMN: it belongs on each row's last response token (the EOS), "
                    "not on padding")
    assert_close(rewards, expected, "per-token rewards (kl_beta=0)",
                 "reward = score on the last response token of each row, 0 elsewhere")
    empty = ppo_trainer.PPOTrainer.token_rewards(torch.tensor([3.0]), torch.zeros(1, 2), None, torch.zeros(1, 2), 0.0)
    assert_close(empty, torch.zeros(1, 2), "rewards of a row with no response token", "an empty row gets nothing")


@pytest.mark.points(2)
def test_kl_penalty_on_every_response_token(ppo_trainer):
    """r_t = -beta (log pi_old - log pi_ref) on response tokens, plus the score on the last one."""
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    old = torch.tensor([[-0.5, -1.0, -7.0], [-0.2, -0.1, -0.3]])
    ref = torch.tensor([[-0.7, -0.4, -1.0], [-0.2, -0.9, -0.1]])
    scores = torch.tensor([1.0, 0.0])
    rewards = ppo_trainer.PPOTrainer.token_rewards(scores, old, ref, mask, 0.1)
    expected = -0.1 * (old - ref) * mask
    expected[0, 1] += 1.0
    if is_close(rewards, -expected + 2 * torch.tensor([[0, 1.0, 0], [0, 0, 0]])):
        pytest.fail("the KL penalty has the wrong sign: the reward is MINUS beta * (log pi_old - log pi_ref)")
    assert_close(rewards, expected, "per-token rewards with kl_beta=0.1",
                 "r_t = -kl_beta * (old_logprobs - ref_logprobs) on response tokens (0 on padding), "
                 "plus the score on the last response token")


# ---------------------------------------------------------------------------------------------- advantages
@pytest.mark.points(2)
def test_returns_are_gae_plus_values(ppo_trainer, ppo_loss):
    """The critic's targets: R = GAE (with the trainer's gamma and lam) + V on response tokens, not whitened."""
    require_ppo_loss(ppo_loss)
    case = ADVANTAGE_CASE
    trainer = make_trainer(ppo_trainer, gamma=0.9, lam=0.8)
    _, returns = trainer.compute_advantages(case["rewards"], case["values"], case["mask"])
    raw = gae_by_definition(case["rewards"], case["values"], case["mask"], 0.9, 0.8)
    on = case["mask"].bool()
    if is_close(returns[on], (gae_by_definition(case["rewards"], case["values"], case["mask"], 0.99, 0.95)
                              + case["values"].double())[on]):
        pytest.fail("the returns use gamma = 0.99 and lam = 0.95 (compute_gae's defaults), not the trainer's "
                    "self.gamma and self.lam")
    assert_close(returns[on], (raw + case["values"].double())[on], "returns on response tokens",
                 "returns = GAE + values (compute_gae with self.gamma, self.lam and the mask), not whitened")


@pytest.mark.points(3)
def test_advantages_whitened_over_response_tokens(ppo_trainer, ppo_loss):
    """Advantages: GAE whitened over the response tokens only (mean 0, unbiased variance 1), 0 on padding."""
    require_ppo_loss(ppo_loss)
    case = ADVANTAGE_CASE
    mask = case["mask"]
    trainer = make_trainer(ppo_trainer, gamma=0.9, lam=0.8)
    advantages, _ = trainer.compute_advantages(case["rewards"], case["values"], mask)
    raw = gae_by_definition(case["rewards"], case["values"], mask, 0.9, 0.8)
    on = mask.bool()
    mean, var = raw[on].mean(), raw[on].var()   # unbiased, as loss.masked_whiten
    expected = torch.where(on, (raw - mean) / torch.sqrt(var + 1e-8), torch.zeros_like(raw))
    assert tuple(advantages.shape) == tuple(mask.shape), f"advantages shape {tuple(advantages.shape)}, expected [N, T]"
    if is_close(advantages[on], raw[on]):
        pytest.fail("the advantages are not whitened: subtract their mean and divide by their std over the "
                    "batch's response tokens (loss.masked_whiten)")
    if is_close(advantages[on], ((raw - raw.mean()) / torch.sqrt(raw.var() + 1e-8))[on]):
        pytest.fail("the whitening counted the padding: take the mean and the variance over the response tokens only "
                    "(loss.masked_whiten(advantages, mask))")
    population = (raw - mean) / torch.sqrt(raw[on].var(correction=0) + 1e-8)
    if is_close(advantages[on], population[on]):
        pytest.fail("the advantages were whitened with the population variance (divided by n): use the unbiased "
                    "variance (n - 1), as documented and as loss.masked_whiten, verl and TRL compute it")
    assert_close(advantages[on], expected[on], "whitened GAE advantages on response tokens",
                 "A = (GAE - mean) / sqrt(unbiased var + 1e-8), mean and var over the response tokens "
                 "(loss.masked_whiten), with self.gamma and self.lam")
    assert_close(advantages[~on], torch.zeros(int((~on).sum())), "advantages on padding", "set padding to 0")


# ---------------------------------------------------------------------------------------------- experiences
@pytest.mark.points(2)
def test_collect_experiences_contents(ppo_trainer, ppo_loss):
    """Rollout, old log-probs, critic values, scores, rewards, advantages: right shapes, right values, no gradient."""
    require_ppo_loss(ppo_loss)
    actor, critic = tiny_gpt(1), tiny_critic(1)
    trainer = make_trainer(ppo_trainer, actor, critic, kl_beta=0.0, task=ToyTask(max_new_tokens=4))
    batch = toy_batch(6)
    exp = trainer.collect_experiences(batch)
    assert isinstance(exp, dict), f"collect_experiences returned {type(exp).__name__}, expected a dict"
    mask = exp["mask"]
    n, t = exp["completions"].shape
    assert n == 6 and 1 <= t <= 4, f"completions shape {(n, t)}, expected [N, T] with N = 6 and T <= 4"
    for key in ("old_logprobs", "values", "rewards", "advantages", "returns"):
        assert tuple(exp[key].shape) == (n, t), f"experiences[{key!r}] shape {tuple(exp[key].shape)}, expected {(n, t)}"
        assert not exp[key].requires_grad, f"experiences[{key!r}] carries a gradient: collect without gradient"
    assert torch.equal(exp["prompts"], batch.prompts), "experiences['prompts'] must be the batch's prompts"
    on = mask.bool()
    assert_close(exp["old_logprobs"][on], logprobs_of(actor, batch.prompts, exp["completions"])[on], "old log-probs",
                 "log pi_old: the log-probs of the sampled tokens under the actor (the rollout records them)")
    with torch.no_grad():
        values = values_for(critic, batch.prompts, exp["completions"])
    assert_close(exp["values"][on], values[on], "values", "the critic's values_for(critic, prompts, completions)")
    scores = REWARDS["partial"](exp["completions"], batch.answers)
    assert_close(exp["scores"], scores, "scores", "score each completion with task.reward(kind=self.reward_kind)")
    last = mask.sum(1).long() - 1
    assert_close(exp["rewards"].sum(1), scores, "sum of the per-token rewards (kl_beta=0)",
                 "with kl_beta = 0 the only reward is the score")
    assert_close(exp["rewards"].gather(1, last[:, None]).squeeze(1), scores, "reward on the last response token",
                 "the score goes on the last response token")
    advantages, returns = trainer.compute_advantages(exp["rewards"], exp["values"], mask)
    assert_close(exp["advantages"][on], advantages[on], "advantages", "the advantages of compute_advantages")
    assert_close(exp["returns"][on], returns[on], "returns", "the returns of compute_advantages")


@pytest.mark.points(2)
def test_collect_experiences_reference_once_without_gradient(ppo_trainer, ppo_loss):
    """kl_beta > 0: the reference reads every row once (in one call or several), without gradient, and its KL
    enters the rewards."""
    require_ppo_loss(ppo_loss)
    ref_inner = tiny_gpt(2)
    ref = CountingModel(ref_inner)
    trainer = make_trainer(ppo_trainer, tiny_gpt(3), tiny_critic(3), ref, kl_beta=0.1, task=ToyTask(max_new_tokens=4))
    batch = toy_batch(5)
    exp = trainer.collect_experiences(batch)
    assert ref.rows == 5, (f"the reference model read {ref.rows} rows, expected N = 5: one pass over every row "
                           f"(one call or micro-batches)")
    assert not any(call["grad"] for call in ref.calls), "the reference pass ran with autograd on: use torch.no_grad()"
    ref_logp = logprobs_of(ref_inner, batch.prompts, exp["completions"])
    on = exp["mask"].bool()
    assert exp["ref_logprobs"] is not None, "kl_beta > 0: experiences['ref_logprobs'] must hold log pi_ref"
    assert_close(exp["ref_logprobs"][on], ref_logp[on], "reference log-probs", "the reference model's log-probs")
    kl_part = -0.1 * (exp["old_logprobs"] - ref_logp) * exp["mask"]
    assert_close((exp["rewards"] - kl_part).sum(1), exp["scores"], "rewards minus the KL penalty, summed per row",
                 "r_t = -kl_beta * (log pi_old - log pi_ref) + score on the last token")


@pytest.mark.points(1)
def test_kl_beta_zero_never_calls_the_reference(ppo_trainer, ppo_loss):
    """With kl_beta = 0 the KL penalty is off: a whole training step must not run the reference model."""
    require_ppo_loss(ppo_loss)
    trainer = make_trainer(ppo_trainer, ref_model=RaisingModel(), kl_beta=0.0, num_epochs=1,
                           task=ToyTask(max_new_tokens=3))
    metrics = trainer.training_step(toy_batch(4))
    assert isinstance(metrics, dict), f"training_step returned {type(metrics).__name__}, expected a dict of metrics"


# ---------------------------------------------------------------------------------------------- update_policy
@pytest.mark.points(3)
def test_update_policy_runs_num_epochs(ppo_trainer, ppo_loss):
    """num_epochs passes over the experiences, num_minibatches steps each, on both networks."""
    for epochs, minibatches in ((3, 2), (1, 4)):
        run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, num_epochs=epochs, num_minibatches=minibatches)
        expected = epochs * minibatches
        assert run["actor_steps"].count == expected, (
            f"num_epochs={epochs}, num_minibatches={minibatches}: {run['actor_steps'].count} actor optimizer steps, "
            f"expected {expected}: one step per minibatch, every epoch")
        assert run["critic_steps"].count == expected, (
            f"{run['critic_steps'].count} critic optimizer steps, expected {expected}: step the critic's own "
            f"optimizer after every minibatch too")
        rows = sorted(i for n in range(len(run["recorder"].calls))
                      for i in row_ids(run["recorder"].value(n, "response_mask")))
        assert rows == sorted(list(range(ROWS)) * epochs), (
            f"over {epochs} epochs the minibatches covered the rows {rows}: each epoch covers every row once")


@pytest.mark.points(1)
def test_each_epoch_shuffles_the_rows_with_the_trainers_generator(ppo_trainer, ppo_loss):
    """Every epoch draws a fresh order of the rows, from self.generator (same seed, same minibatches)."""
    def minibatches(global_seed):
        run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, num_epochs=4, num_minibatches=2, lr=0.0,
                                              global_seed=global_seed)
        return [tuple(sorted(row_ids(run["recorder"].value(n, "response_mask"))))
                for n in range(len(run["recorder"].calls))]

    first = minibatches(1)
    assert len(first) == 8, f"{len(first)} loss calls, expected 8 (4 epochs x 2 minibatches)"
    epochs = [tuple(first[2 * e: 2 * e + 2]) for e in range(4)]
    assert len(set(epochs)) > 1, ("the 4 epochs used the same minibatches: shuffle the rows afresh at every epoch "
                                  "(torch.randperm with self.generator)")
    assert minibatches(2) == first, ("the same trainer seed gave other minibatches: shuffle with "
                                     "generator=self.generator, not the global random stream")


@pytest.mark.points(2)
def test_update_policy_clears_gradients(ppo_trainer, ppo_loss):
    """Each minibatch step uses its own gradients, on the actor and on the critic."""
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss)
    recorder = run["recorder"]
    assert recorder.backwards == 4, f"{recorder.backwards} backward passes, expected 4 (2 epochs x 2 minibatches)"
    assert recorder.dirty_backward == 0, (f"{recorder.dirty_backward} backward passes started with old gradients "
                                          f"in a network: zero both optimizers' gradients before each backward")


@pytest.mark.points(1)
def test_both_gradient_norms_clipped(ppo_trainer, ppo_loss):
    """max_grad_norm bounds the gradient norm of each network at each step."""
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, num_epochs=1, max_grad_norm=1e-3)
    for name in ("actor", "critic"):
        norms = run[f"{name}_steps"].norms
        assert norms, f"no {name} optimizer step was taken"
        assert max(norms) <= 1e-3 * (1 + 1e-3), (
            f"the {name}'s gradient norm {max(norms):.3g} reached its optimizer with max_grad_norm=1e-3: clip each "
            f"network's gradient norm between backward and step")


@pytest.mark.points(2)
def test_update_policy_uses_the_collected_experiences(ppo_trainer, ppo_loss):
    """Every minibatch compares pi_theta with the collected log pi_old and trains on the collected advantages and
    returns, each row with its own."""
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, lr=0.05)
    recorder, exp = run["recorder"], run["experiences"]
    assert recorder.calls, "update_policy never called self.ppo_loss"
    names = {"old_policy_logprobs": "old_logprobs", "advantages": "advantages", "returns": "returns"}
    for number in range(len(recorder.calls)):
        mask = recorder.value(number, "response_mask")
        assert mask is not None, "pass the response mask to the loss"
        for row, i in enumerate(row_ids(mask)):
            on = mask[row].bool()
            for argument, key in names.items():
                given = recorder.value(number, argument)
                if not is_close(given[row][on], exp[key][i][on]):
                    pytest.fail(f"loss call {number + 1}: the loss's {argument} of a row are not the collected "
                                f"experiences[{key!r}] of that row: index every experience tensor with the same "
                                f"minibatch rows, and never recompute them during the update")


@pytest.mark.points(2)
def test_each_minibatch_runs_the_current_networks(ppo_trainer, ppo_loss):
    """Each minibatch's log pi_theta and values come from forward passes with gradient of the networks as they
    are at that minibatch (after the earlier steps)."""
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, lr=0.05)
    recorder, exp = run["recorder"], run["experiences"]
    assert len(recorder.calls) == 4, f"{len(recorder.calls)} loss calls, expected 4 (2 epochs x 2 minibatches)"
    current = tiny_gpt(0)
    for number, state in enumerate(recorder.weights):
        logp, logp_grad = recorder.calls[number]["policy_logprobs"]
        values, values_grad = recorder.calls[number]["values"]
        assert logp_grad, "the policy log-probs given to the loss carry no gradient: compute them with autograd on"
        assert values_grad, "the values given to the loss carry no gradient: the critic would never learn"
        current.load_state_dict(state)
        expected = logprobs_of(current, exp["prompts"], exp["completions"])
        mask = recorder.value(number, "response_mask")
        for row, i in enumerate(row_ids(mask)):
            on = mask[row].bool()
            if not is_close(logp[row][on], expected[i][on]):
                pytest.fail(f"loss call {number + 1}: log pi_theta of a row is not the actor's as it is now: run the "
                            f"forward pass for each minibatch, after the previous optimizer step")


@pytest.mark.points(2)
def test_old_values_reach_the_value_clip(ppo_trainer, ppo_loss):
    """With value_clip, the loss clips the new values around the values collected with the experiences: they
    reach it as old_values, each row with its own."""
    require_ppo_loss(ppo_loss)
    try:
        run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, value_clip=0.2, lr=0.05)
    except Exception as error:  # noqa: BLE001 - the student's loss may refuse value_clip without old_values
        raise AssertionError(f"update_policy with value_clip=0.2 raised {type(error).__name__}: {error}. Pass "
                             f"old_values=the values collected with the experiences to the loss") from None
    recorder, exp = run["recorder"], run["experiences"]
    assert recorder.calls, "update_policy never called self.ppo_loss"
    for number in range(len(recorder.calls)):
        old_values = recorder.value(number, "old_values")
        assert old_values is not None, (
            "the loss got old_values=None: value_clip clips the new values around the values collected with the "
            "experiences, so pass old_values=experiences['values'] (per minibatch)")
        mask = recorder.value(number, "response_mask")
        for row, i in enumerate(row_ids(mask)):
            on = mask[row].bool()
            if is_close(old_values[row][on], exp["values"][i][on]):
                continue
            if is_close(old_values[row][on], exp["returns"][i][on]):
                pytest.fail("old_values are the returns: the value clip would then hold the new values near their "
                            "targets. Clip around the critic's values at collection time (experiences['values'])")
            pytest.fail(f"loss call {number + 1}: old_values of a row are not the values collected for that row "
                        f"(the critic's current values make the clip do nothing): pass experiences['values'] "
                        f"indexed like the rest")


@pytest.mark.points(2)
def test_update_policy_early_stop_on_target_kl(ppo_trainer, ppo_loss):
    """With a tiny target_kl the epochs stop once the approximate KL passes 1.5 * target_kl; the metrics say so."""
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, num_epochs=4, num_minibatches=2, lr=0.05,
                                          target_kl=1e-9)
    steps = run["actor_steps"].count
    assert 1 <= steps < 8, (f"{steps} optimizer steps with target_kl=1e-9 (8 without early stop): stop every epoch "
                            f"once self.ppo_loss.metrics['approx_kl'] > 1.5 * target_kl")
    metrics = run["metrics"]
    assert isinstance(metrics, dict), f"update_policy returned {type(metrics).__name__}, expected a dict"
    assert metrics.get("early_stopped") == 1.0, (
        f"metrics['early_stopped'] = {metrics.get('early_stopped')}, expected 1.0")
    assert metrics.get("epochs_run", 4) < 4, f"metrics['epochs_run'] = {metrics.get('epochs_run')}, expected < 4"


@pytest.mark.points(2)
def test_nonfinite_loss_skipped_and_counted(ppo_trainer, ppo_loss):
    """A loss that is NaN or inf is not stepped on (both networks stay finite) and is counted."""
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, poison={2: float("nan"), 3: float("inf")})
    assert len(run["recorder"].calls) == 4, f"{len(run['recorder'].calls)} loss calls, expected 4"
    assert all_finite(run["actor"]) and all_finite(run["critic"]), (
        "the weights hold NaN or inf: a non-finite loss was stepped on; skip it")
    assert run["actor_steps"].count == 2 and run["critic_steps"].count == 2, (
        f"{run['actor_steps'].count} actor and {run['critic_steps'].count} critic steps with 2 of 4 losses NaN/inf, "
        f"expected 2 each: skip the step of a loss that is not finite, take the others")
    assert_nonfinite_counted(run["metrics"])


@pytest.mark.points(2)
def test_temperature_in_every_logprob_pass(ppo_trainer, ppo_loss):
    """At temperature 0.5 the rollout samples, log pi_old, log pi_ref and the update's log pi_theta all use 0.5."""
    require_ppo_loss(ppo_loss)
    temperature = 0.5
    actor, ref_inner = tiny_gpt(5), tiny_gpt(6)
    trainer = make_trainer(ppo_trainer, actor, tiny_critic(5), CountingModel(ref_inner), kl_beta=0.1,
                           temperature=temperature, task=ToyTask(max_new_tokens=4))
    batch = toy_batch(6)
    exp = trainer.collect_experiences(batch)
    on = exp["mask"].bool()
    if not is_close(exp["old_logprobs"][on], logprobs_of(actor, batch.prompts, exp["completions"], temperature)[on]):
        pytest.fail(f"log pi_old is not at the temperature {temperature}: sample with temperature=self.temperature "
                    f"(the rollout's log-probs are those of the distribution it sampled from)")
    if not is_close(exp["ref_logprobs"][on], logprobs_of(ref_inner, batch.prompts, exp["completions"],
                                                         temperature)[on]):
        pytest.fail(f"log pi_ref is not at the temperature {temperature}: pass temperature=self.temperature")
    run = update_on_hand_made_experiences(ppo_trainer, ppo_loss, num_epochs=1, num_minibatches=1,
                                          temperature=temperature)
    logp = run["recorder"].value(0, "policy_logprobs")
    mask = run["recorder"].value(0, "response_mask")
    expected = logprobs_of(run["pi_old"], run["experiences"]["prompts"], run["experiences"]["completions"], temperature)
    for row, i in enumerate(row_ids(mask)):
        on = mask[row].bool()
        if not is_close(logp[row][on], expected[i][on]):
            pytest.fail(f"the update's log pi_theta is not at the temperature {temperature}: every log-prob pass "
                        f"divides the logits by self.temperature, as the rollout did")


# ---------------------------------------------------------------------------------------------- training_step
@pytest.mark.points(2)
def test_training_step_returns_the_metrics(ppo_trainer, ppo_loss):
    """training_step returns a dict of floats describing the rollout and the update."""
    require_ppo_loss(ppo_loss)
    trainer = make_trainer(ppo_trainer, kl_beta=0.1, num_epochs=2, num_minibatches=2, task=ToyTask(max_new_tokens=4))
    collected = record_rollouts(trainer, "collect_experiences")
    batch = toy_batch(6)
    metrics = trainer.training_step(batch)
    assert isinstance(metrics, dict), f"training_step returned {type(metrics).__name__}, expected a dict"
    assert len(collected) == 1, f"training_step called self.collect_experiences {len(collected)} times, expected once"
    required = ("reward_mean", "solved", "response_length", "loss", "optimizer_steps", "nonfinite_losses",
                "value_loss", "explained_variance", "clip_fraction", "approx_kl", "epochs_run", "early_stopped", "kl")
    missing = [key for key in required if key not in metrics]
    assert not missing, f"training_step's metrics lack {missing}"
    for key in required:
        value = metrics[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (
            f"metrics[{key!r}] is {type(value).__name__}, expected a float (.item() a tensor)")
    exp = collected[0]
    mask = exp["mask"]
    assert_close(metrics["reward_mean"], exp["scores"].mean(), "metrics['reward_mean']", "the mean task score")
    assert_close(metrics["solved"], REWARDS["exact"](exp["completions"], batch.answers).mean(), "metrics['solved']",
                 "the share of completions exactly right")
    assert_close(metrics["response_length"], mask.sum(-1).mean(), "metrics['response_length']",
                 "the mean number of response tokens")
    variance = explained_variance(exp["values"], exp["returns"], mask)
    if variance == variance:
        assert_close(metrics["explained_variance"], variance, "metrics['explained_variance']",
                     "training.rl_metrics.explained_variance(values, returns, mask) of the collected experiences")
    assert_close(metrics["kl"], ((exp["old_logprobs"] - exp["ref_logprobs"]) * mask).sum() / mask.sum(),
                 "metrics['kl']", "the mean over response tokens of log pi_old - log pi_ref")
    assert_close(metrics["optimizer_steps"], 4, "metrics['optimizer_steps']", "2 epochs x 2 minibatches")
    assert_close(metrics["epochs_run"], 2, "metrics['epochs_run']")
    assert_close(metrics["early_stopped"], 0, "metrics['early_stopped']", "no target_kl, no early stop")
    assert_close(metrics["nonfinite_losses"], 0, "metrics['nonfinite_losses']")


# ---------------------------------------------------------------------------------------------- it learns
@pytest.mark.points(3)
def test_training_raises_the_best_answer(ppo_trainer, ppo_loss):
    """A one-token problem with one best answer ("7"): a few PPO iterations make it several times more likely."""
    require_ppo_loss(ppo_loss)
    actor = tiny_gpt(9)
    critic = ValueModel.from_policy(actor)
    trainer = make_trainer(ppo_trainer, actor, critic, seed=9, num_epochs=2, num_minibatches=2, reward_kind="exact",
                           task=ToyTask(max_new_tokens=1))
    batch = toy_batch(32, with_eos=False)

    def probability():
        return logprobs_of(actor, batch.prompts, batch.answers).exp().mean().item()

    before = probability()
    for _ in range(5):
        trainer.training_step(batch)
    after = probability()
    assert after > 3 * before, (
        f"after 5 PPO iterations the best answer's probability went from {before:.4f} to {after:.4f}: expected at "
        f"least a 3-fold rise (check the advantages' sign and that both networks are stepped)")
