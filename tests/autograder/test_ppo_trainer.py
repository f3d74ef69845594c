"""Graded tests of the PPO trainer exercise (exercises/ppo_trainer.py).

A one-layer, 16-wide GPT as the actor and a value model of the same size as the critic, seeded, on CPU.
Reference values: hand-built rewards, values and masks (GAE computed here by its definition), the
networks' own outputs recomputed in one forward pass, and properties; nothing is imported from solutions/.
The trainer runs your own compute_gae and PPOLoss, so these tests need a working ppo_loss: while it still
raises NotImplementedError they fail with "finish ppo_loss first".
"""
import copy
import inspect

import pytest
import torch

from tests.autograder.snapshots import assert_close
from training.model import GPT, GPTConfig, ValueModel
from training.rewards import REWARDS
from training.rollout import sequence_logprobs, values_for
from training.tokenizer import EOS_ID, TOKENIZER

DIGIT = {d: TOKENIZER.encode(str(d))[0] for d in range(10)}


# ---------------------------------------------------------------------------------------------- toys
def tiny_config(block_size: int = 10) -> GPTConfig:
    return GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)


def tiny_actor(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config())


def tiny_critic(seed: int = 0) -> ValueModel:
    torch.manual_seed(seed + 1000)
    return ValueModel(tiny_config())


class ToyTask:
    """The smallest task the trainer accepts: a rule reward over completions and `max_new_tokens`."""

    name = "toy"

    def __init__(self, max_new_tokens: int = 4):
        self.max_new_tokens = max_new_tokens

    def reward(self, completions, answers, kind="exact"):
        return REWARDS[kind](completions, answers)


class Batch:
    def __init__(self, prompts, answers):
        self.prompts, self.answers = prompts, answers


def toy_batch(n: int, with_eos: bool = True) -> Batch:
    """n distinct digit prompts; the answer of each is "7" (then EOS when with_eos)."""
    prompts = torch.tensor([[DIGIT[(3 * i) % 10], DIGIT[(7 * i + 1) % 10], DIGIT[(i + 5) % 10]] for i in range(n)])
    tokens = [DIGIT[7], EOS_ID] if with_eos else [DIGIT[7]]
    return Batch(prompts, torch.tensor([tokens] * n))


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
    """Stands in for trainer.ppo_loss: calls the real loss and checks, at the start of each backward pass, that
    neither network still holds gradients from an earlier minibatch (a hook on the returned loss)."""

    def __init__(self, inner, *models):
        super().__init__()
        self.inner, self.models = inner, models
        self.calls, self.backwards, self.dirty_backward = [], 0, 0

    @property
    def metrics(self):
        return self.inner.metrics

    def forward(self, *args, **kwargs):
        bound = inspect.signature(self.inner.forward).bind(*args, **kwargs)
        self.calls.append({name: value.detach().clone() if isinstance(value, torch.Tensor) else value
                           for name, value in bound.arguments.items()})
        loss = self.inner(*args, **kwargs)
        if loss.requires_grad:
            loss.register_hook(self._on_backward)
        return loss

    def _on_backward(self, grad):
        self.backwards += 1
        params = [p for model in self.models for p in model.parameters()]
        if any(p.grad is not None and bool((p.grad != 0).any()) for p in params):
            self.dirty_backward += 1
        return grad


class StepCounter:
    """Wraps optimizer.step (on the instance) and counts the steps."""

    def __init__(self, optimizer):
        self.count = 0
        self.inner = optimizer.step
        optimizer.step = self

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.inner(*args, **kwargs)


def require_loss(ppo_loss):
    """Fail clearly when the student's PPO loss is not written yet (the trainer runs it)."""
    try:
        ones = torch.ones(1, 2)
        ppo_loss.compute_gae(ones, ones, 1.0, 1.0, ones)
        ppo_loss.PPOLoss()(ones, ones, ones, ones, ones, ones, ones)
    except NotImplementedError as err:
        pytest.fail(f"finish ppo_loss first: the trainer runs your compute_gae and PPOLoss, which still raise "
                    f"NotImplementedError ({err})")


def make_trainer(ppo_trainer, actor=None, critic=None, ref_model=None, *, gamma=1.0, lam=0.95, seed=0, **options):
    actor = actor if actor is not None else tiny_actor(seed)
    critic = critic if critic is not None else tiny_critic(seed)
    options.setdefault("task", ToyTask())
    options.setdefault("generator", torch.Generator().manual_seed(seed))
    return ppo_trainer.PPOTrainer(actor, critic, ref_model, 0.2, gamma, lam, **options)


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
    if torch.allclose(rewards.double(), torch.tensor([[0.5, 0, 0, 0], [1.0, 0, 0, 0], [-2.0, 0, 0, 0]]).double()):
        pytest.fail("the score sits on the FIRST response token: it belongs on the last one (index mask.sum() - 1)")
    if torch.allclose(rewards.double(), torch.tensor([[0, 0, 0, 0.5], [0, 0, 0, 1.0], [0, 0, 0, -2.0]]).double()):
        pytest.fail("the score sits in the last COLUMN: it belongs on each row's last response token (the EOS), "
                    "not on padding")
    assert_close(rewards, expected, "per-token rewards (kl_beta=0)",
                 "reward = score on the last response token of each row (index mask.sum() - 1), 0 elsewhere")
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
    if torch.allclose(rewards, -expected + 2 * torch.tensor([[0, 1.0, 0], [0, 0, 0]]), atol=1e-6):
        pytest.fail("the KL penalty has the wrong sign: the reward is MINUS beta * (log pi_old - log pi_ref)")
    assert_close(rewards, expected, "per-token rewards with kl_beta=0.1",
                 "r_t = -kl_beta * (old_logprobs - ref_logprobs) on response tokens (0 on padding), "
                 "plus the score on the last response token")


# ---------------------------------------------------------------------------------------------- advantages
@pytest.mark.points(3)
def test_gae_then_whitening_over_the_mask(ppo_trainer, ppo_loss):
    """Advantages: GAE with the trainer's gamma and lam, whitened over response tokens only; returns unwhitened."""
    require_loss(ppo_loss)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.1, 0.0, -0.2, 0.0, 0.5], [0.0, 2.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0, 9.0], [0.0, 0.3, 0.1, -0.2, 0.4], [1.0, 1.5, 9.0, 9.0, 9.0]])
    trainer = make_trainer(ppo_trainer, gamma=0.9, lam=0.8)
    advantages, returns = trainer.compute_advantages(rewards, values, mask)
    raw = gae_by_definition(rewards, values, mask, 0.9, 0.8)
    on = mask.bool()
    assert_close(returns[on], (raw + values.double())[on], "returns on response tokens",
                 "returns = GAE + values, from compute_gae(rewards, values, self.gamma, self.lam, mask), NOT whitened")
    mean = raw[on].mean()
    std = raw[on].std()   # unbiased, as masked_whiten
    expected = torch.where(on, (raw - mean) / torch.sqrt(std ** 2 + 1e-8), torch.zeros_like(raw))
    if torch.allclose(advantages.double()[on], raw[on], atol=1e-5):
        pytest.fail("the advantages are not whitened: subtract their mean and divide by their std over the "
                    "batch's response tokens (loss.masked_whiten)")
    assert_close(advantages[on].mean(), torch.tensor(0.0, dtype=torch.float64),
                 "mean of the advantages over response tokens",
                 "whiten over the response tokens only: padding must not enter the mean or the variance")
    assert_close(advantages, expected, "whitened GAE advantages",
                 "A = masked_whiten(GAE with self.gamma and self.lam, mask), then 0 on padding")


# ---------------------------------------------------------------------------------------------- experiences
@pytest.mark.points(2)
def test_collect_experiences_contents(ppo_trainer, ppo_loss):
    """Rollout, old log-probs, critic values, scores, rewards, advantages: right shapes, no gradient, no reference."""
    require_loss(ppo_loss)
    actor, critic = tiny_actor(1), tiny_critic(1)
    trainer = make_trainer(ppo_trainer, actor, critic, RaisingModel(), kl_beta=0.0, reward_kind="partial",
                           task=ToyTask(max_new_tokens=4))
    batch = toy_batch(6)
    exp = trainer.collect_experiences(batch)
    mask = exp["mask"]
    n, t = exp["completions"].shape
    assert n == 6 and 1 <= t <= 4, f"completions shape {(n, t)}, expected [N, T] with N = 6 and T <= 4"
    for key in ("old_logprobs", "values", "rewards", "advantages", "returns"):
        assert tuple(exp[key].shape) == (n, t), f"experiences[{key!r}] shape {tuple(exp[key].shape)}, expected {(n, t)}"
        assert not exp[key].requires_grad, f"experiences[{key!r}] carries a gradient: collect in torch.no_grad()"
    assert exp["ref_logprobs"] is None, "kl_beta == 0: ref_logprobs must be None (the reference is never called)"
    on = mask.bool()
    with torch.no_grad():
        logp = sequence_logprobs(actor, batch.prompts, exp["completions"], temperature=trainer.temperature)
        values = values_for(critic, batch.prompts, exp["completions"])
    assert_close(exp["old_logprobs"][on], logp[on], "old log-probs", "log pi_old: the rollout's log-probs")
    assert_close(exp["values"][on], values[on], "values", "the critic's values_for(critic, prompts, completions)")
    scores = REWARDS["partial"](exp["completions"], batch.answers)
    assert_close(exp["scores"], scores, "scores", "score each completion with task.reward(kind=reward_kind)")
    last = mask.sum(1).long() - 1
    assert_close(exp["rewards"].sum(1), scores, "sum of the per-token rewards (kl_beta=0)",
                 "with kl_beta = 0 the only reward is the score")
    assert_close(exp["rewards"].gather(1, last[:, None]).squeeze(1), scores, "reward on the last response token",
                 "the score goes on the last response token")


@pytest.mark.points(1)
def test_collect_experiences_reference_once_no_grad(ppo_trainer, ppo_loss):
    """kl_beta > 0: one reference forward without gradient, and its KL enters the rewards."""
    require_loss(ppo_loss)
    ref_inner = tiny_actor(2)
    ref = CountingModel(ref_inner)
    trainer = make_trainer(ppo_trainer, tiny_actor(3), tiny_critic(3), ref, kl_beta=0.1, task=ToyTask(max_new_tokens=4))
    batch = toy_batch(5)
    exp = trainer.collect_experiences(batch)
    assert len(ref.calls) == 1, f"the reference model ran {len(ref.calls)} times, expected one forward over all rows"
    assert not ref.calls[0][1], "the reference pass ran with autograd on: wrap it in torch.no_grad()"
    with torch.no_grad():
        ref_logp = sequence_logprobs(ref_inner, batch.prompts, exp["completions"], temperature=trainer.temperature)
    on = exp["mask"].bool()
    assert_close(exp["ref_logprobs"][on], ref_logp[on], "reference log-probs", "the reference model's log-probs")
    kl_part = -0.1 * (exp["old_logprobs"] - ref_logp) * exp["mask"]
    assert_close((exp["rewards"] - kl_part).sum(1), exp["scores"], "rewards minus the KL penalty, summed per row",
                 "r_t = -kl_beta * (log pi_old - log pi_ref) + score on the last token")


# ---------------------------------------------------------------------------------------------- update
def _experiences(ppo_trainer, *, num_minibatches=2, lr=0.01, target_kl=None, seed=4):
    actor, critic = tiny_actor(seed), tiny_critic(seed)
    trainer = make_trainer(ppo_trainer, actor, critic, None, seed=seed, num_minibatches=num_minibatches,
                           target_kl=target_kl, reward_kind="partial", task=ToyTask(max_new_tokens=3),
                           actor_optimizer=torch.optim.Adam(actor.parameters(), lr=lr),
                           critic_optimizer=torch.optim.Adam(critic.parameters(), lr=lr))
    exp = trainer.collect_experiences(toy_batch(8))
    return trainer, actor, critic, exp


@pytest.mark.points(3)
def test_update_policy_runs_num_epochs(ppo_trainer, ppo_loss):
    """num_epochs passes over the experiences, num_minibatches steps each, on both networks."""
    require_loss(ppo_loss)
    for epochs, minibatches in ((3, 2), (1, 4)):
        trainer, actor, critic, exp = _experiences(ppo_trainer, num_minibatches=minibatches)
        actor_steps, critic_steps = StepCounter(trainer.actor_optimizer), StepCounter(trainer.critic_optimizer)
        recorder = LossRecorder(trainer.ppo_loss, actor, critic)
        trainer.ppo_loss = recorder
        loss = trainer.update_policy(exp, num_epochs=epochs)
        assert isinstance(loss, float) and loss == loss, f"update_policy returned {loss!r}, expected a finite float"
        expected = epochs * minibatches
        assert actor_steps.count == expected, (f"num_epochs={epochs}, num_minibatches={minibatches}: "
                                               f"{actor_steps.count} actor optimizer steps, expected {expected}")
        assert critic_steps.count == expected, (f"{critic_steps.count} critic optimizer steps, expected {expected}: "
                                                f"step the critic's own optimizer after every minibatch too")
        rows = sum(call["policy_logprobs"].shape[0] for call in recorder.calls)
        assert rows == 8 * epochs, f"the minibatches cover {rows} rows over {epochs} epochs, expected {8 * epochs}"


@pytest.mark.points(2)
def test_update_policy_clears_gradients(ppo_trainer, ppo_loss):
    """Each minibatch step uses its own gradients, on the actor and on the critic."""
    require_loss(ppo_loss)
    trainer, actor, critic, exp = _experiences(ppo_trainer, num_minibatches=2)
    recorder = LossRecorder(trainer.ppo_loss, actor, critic)
    trainer.ppo_loss = recorder
    trainer.update_policy(exp, num_epochs=2)
    assert recorder.backwards == 4, f"{recorder.backwards} backward passes, expected 4 (2 epochs x 2 minibatches)"
    assert recorder.dirty_backward == 0, (f"{recorder.dirty_backward} backward passes started with old gradients "
                                          f"in a network: zero both optimizers' gradients before each backward")


@pytest.mark.points(2)
def test_update_policy_uses_the_collected_old_logprobs(ppo_trainer, ppo_loss):
    """Every minibatch compares pi_theta with the collected log pi_old, and trains on the collected advantages."""
    require_loss(ppo_loss)
    trainer, actor, critic, exp = _experiences(ppo_trainer, num_minibatches=2, lr=0.05)
    recorder = LossRecorder(trainer.ppo_loss, actor, critic)
    trainer.ppo_loss = recorder
    trainer.update_policy(exp, num_epochs=2)
    moved = 0.0
    for call in recorder.calls:
        old, adv, logp = call["old_policy_logprobs"], call["advantages"], call["policy_logprobs"]
        for row in range(old.shape[0]):
            found = [i for i in range(exp["old_logprobs"].shape[0])
                     if torch.allclose(old[row], exp["old_logprobs"][i], atol=1e-6)
                     and torch.allclose(adv[row], exp["advantages"][i], atol=1e-6)]
            assert found, ("the loss got old log-probs / advantages that are not the collected ones for the same "
                           "rows: index every experience tensor with the same minibatch indices")
            moved = max(moved, float(((logp[row] - old[row]).abs() * exp["mask"][found[0]]).max()))
    assert moved > 1e-4, "pi_theta never moved away from pi_old: the later minibatches must see earlier updates"


@pytest.mark.points(1)
def test_update_policy_early_stop_on_target_kl(ppo_trainer, ppo_loss):
    """With a tiny target_kl the epochs stop as soon as the approximate KL passes 1.5 * target_kl."""
    require_loss(ppo_loss)
    trainer, _, _, exp = _experiences(ppo_trainer, num_minibatches=2, lr=0.05, target_kl=1e-9)
    steps = StepCounter(trainer.actor_optimizer)
    trainer.update_policy(exp, num_epochs=4)
    assert 1 <= steps.count < 8, (f"{steps.count} optimizer steps with target_kl=1e-9 (of 8 without early stop): "
                                  f"stop once ppo_loss.metrics['approx_kl'] > 1.5 * target_kl")


@pytest.mark.points(3)
def test_training_raises_the_best_answer(ppo_trainer, ppo_loss):
    """A one-token problem with one best answer ("7"): a few PPO iterations make it several times more likely."""
    require_loss(ppo_loss)
    actor = tiny_actor(9)
    critic = ValueModel.from_policy(actor)
    trainer = make_trainer(ppo_trainer, actor, critic, None, seed=9, task=ToyTask(max_new_tokens=1),
                           num_minibatches=2, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=0.01),
                           critic_optimizer=torch.optim.Adam(critic.parameters(), lr=0.01))
    batch = toy_batch(32, with_eos=False)
    target = batch.answers

    def probability():
        with torch.no_grad():
            return sequence_logprobs(actor, batch.prompts, target).exp().mean().item()

    before = probability()
    for _ in range(5):
        trainer.update_policy(trainer.collect_experiences(batch), num_epochs=2)
    after = probability()
    assert after > 3 * before, (
        f"after 5 PPO iterations the best answer's probability went from {before:.4f} to {after:.4f}: expected at "
        f"least a 3-fold rise (check the advantages' sign and that both networks are stepped)")
