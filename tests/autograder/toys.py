"""The toys the graded trainer tests share: tiny seeded models, a toy task, and recorders that watch a trainer.

Everything runs on a one-layer, 16-wide GPT over the course vocabulary, on CPU, in milliseconds. The recorders
wrap what a trainer calls (its loss, its optimizers' step, the reference model, its rollout) and keep what they
saw, so a test can check the algorithm's order and inputs without depending on how the code is written.
Nothing here comes from solutions/.
"""
import copy
import inspect

import pytest
import torch

from tests.autograder.snapshots import is_close
from training.model import GPT, GPTConfig, ValueModel
from training.rewards import REWARDS
from training.rollout import sequence_logprobs
from training.tokenizer import EOS_ID, TOKENIZER

DIGIT = {d: TOKENIZER.encode(str(d))[0] for d in range(10)}


# ---------------------------------------------------------------------------------------------- models and task
def tiny_config(block_size: int = 10) -> GPTConfig:
    return GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)


def tiny_gpt(seed: int = 0) -> GPT:
    """A 1-layer, 2-head, 16-wide GPT with the course vocabulary: random, seeded, fast."""
    torch.manual_seed(seed)
    return GPT(tiny_config())


def tiny_critic(seed: int = 0) -> ValueModel:
    torch.manual_seed(seed + 1000)
    return ValueModel(tiny_config())


class ToyTask:
    """The smallest task the trainers accept: a rule reward over completions and `max_new_tokens`."""

    name = "toy"

    def __init__(self, max_new_tokens: int = 4):
        self.max_new_tokens = max_new_tokens

    def reward(self, completions, answers, kind="exact"):
        return REWARDS[kind](completions, answers)


class Batch:
    def __init__(self, prompts, answers):
        self.prompts, self.answers = prompts, answers


def toy_prompts(n: int) -> torch.Tensor:
    """[n, 3] distinct prompts of digits."""
    return torch.tensor([[DIGIT[(3 * i) % 10], DIGIT[(7 * i + 1) % 10], DIGIT[(i + 5) % 10]] for i in range(n)])


def toy_batch(n: int, answer=(7,), with_eos: bool = True) -> Batch:
    """n distinct prompts, each answered by the digits `answer` (then EOS when with_eos)."""
    tokens = [DIGIT[d] for d in answer] + ([EOS_ID] if with_eos else [])
    return Batch(toy_prompts(n), torch.tensor([tokens] * n))


def logprobs_of(model, prompts, completions, temperature=1.0) -> torch.Tensor:
    """The model's log-probs of completions [N, T] (or grouped [B, G, T]) after prompts [N, P] ([B, P]), no grad."""
    grouped = completions.dim() == 3
    rows = completions.reshape(-1, completions.shape[-1])
    if grouped:
        prompts = prompts[:, None, :].expand(-1, completions.shape[1], -1).reshape(rows.shape[0], -1)
    with torch.no_grad():
        flat = sequence_logprobs(model, prompts, rows, temperature=temperature)
    return flat.view(completions.shape)


# ---------------------------------------------------------------------------------------------- recorders
class RaisingModel(torch.nn.Module):
    """A reference model that must never run."""

    def forward(self, *args, **kwargs):
        raise AssertionError("the reference model was called although kl_beta == 0: skip the reference pass entirely")


class CountingModel(torch.nn.Module):
    """Wraps a model; records each forward call: rows, whether autograd was on, and `clock()` at that time."""

    def __init__(self, inner, clock=lambda: 0):
        super().__init__()
        self.inner = inner
        self.clock = clock
        self.calls = []

    @property
    def rows(self) -> int:
        return sum(call["rows"] for call in self.calls)

    def forward(self, idx, kv_cache=None):
        self.calls.append({"rows": idx.shape[0], "grad": torch.is_grad_enabled(), "clock": self.clock()})
        return self.inner(idx, kv_cache=kv_cache)


def _snapshot(value):
    """(a detached copy, whether it required grad) of a tensor argument; (value, None) for anything else."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone(), value.requires_grad
    return value, None


class LossRecorder(torch.nn.Module):
    """Stands in for a trainer's loss: calls the real loss and keeps, for every call, each argument as
    (detached copy, requires_grad) under its parameter name. At the start of each backward pass (a hook on the
    returned loss) it checks that the models' gradients were cleared.

    poison: {call number (1-based): value}: that call returns loss * value (NaN, inf), graph intact.
    keep_weights: also keep a copy of the first model's weights at each call (in `weights`)."""

    def __init__(self, inner, *models, poison=None, keep_weights=False):
        super().__init__()
        self.inner, self.models, self.poison, self.keep_weights = inner, models, poison or {}, keep_weights
        self.calls, self.weights, self.backwards, self.dirty_backward = [], [], 0, 0

    @property
    def metrics(self):
        return self.inner.metrics

    def forward(self, *args, **kwargs):
        bound = inspect.signature(self.inner.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append({name: _snapshot(value) for name, value in bound.arguments.items()})
        if self.keep_weights:
            self.weights.append(copy.deepcopy(self.models[0].state_dict()))
        loss = self.inner(*args, **kwargs)
        if len(self.calls) in self.poison:
            loss = loss * self.poison[len(self.calls)]
        if loss.requires_grad:
            loss.register_hook(self._on_backward)
        return loss

    def value(self, number: int, name: str):
        """The recorded tensor (or None) of argument `name` in call `number` (0-based)."""
        return self.calls[number][name][0]

    def _on_backward(self, grad):
        self.backwards += 1
        params = [p for model in self.models for p in model.parameters()]
        if any(p.grad is not None and bool((p.grad != 0).any()) for p in params):
            self.dirty_backward += 1
        return grad


class StepCounter:
    """Wraps optimizer.step (on the instance): counts steps and records the gradient norm each step sees."""

    def __init__(self, optimizer, params=None):
        self.count, self.norms = 0, []
        self.params = list(params) if params is not None else [p for group in optimizer.param_groups
                                                                 for p in group["params"]]
        self.inner = optimizer.step
        optimizer.step = self

    def __call__(self, *args, **kwargs):
        self.count += 1
        grads = [p.grad.detach().flatten() for p in self.params if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()) if grads else 0.0)
        return self.inner(*args, **kwargs)


def record_rollouts(trainer, method: str = "generate_group_outputs") -> list:
    """Wraps trainer.<method> (on the instance); returns the list its results are appended to."""
    seen = []
    original = getattr(trainer, method)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result)
        return result

    setattr(trainer, method, wrapper)
    return seen


def all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def assert_nonfinite_counted(metrics, expected: int = 2) -> None:
    """The step's metrics count the `expected` losses that were skipped for being NaN or inf."""
    counted = metrics.get("nonfinite_losses") if isinstance(metrics, dict) else None
    assert counted == expected, (f"metrics['nonfinite_losses'] = {counted}, expected {expected}: count the losses "
                                 f"skipped")


# ---------------------------------------------------------------------------------------------- the losses first
def require_grpo_loss(grpo_loss):
    """The trainer runs your GRPOLoss: check it on a hand-checked case first, so that a wrong loss is reported
    as a wrong loss and not as a wrong trainer."""
    logp = torch.tensor([[[-1.0, -0.5, -0.7], [-2.0, -1.0, -0.3]]], dtype=torch.float64)
    old = torch.tensor([[[-1.2, -0.5, 0.0], [-1.5, -1.0, -0.3]]], dtype=torch.float64)
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    token_advantages = torch.tensor([[[1.0, 0.5, 9.0], [-0.5, -0.5, 1.0]]], dtype=torch.float64)
    # ratios: e^0.2 (clipped to 1.2 for A > 0), 1 | e^-0.5 (clipped to 0.8 for A < 0), 1, 1; per-row token means
    expected = {"advantages [B, G]": (-(1.2 + 1.0) / 2 + (0.8 * 0.5 + 0.5 + 0.5) / 3) / 2,
                "advantages [B, G, T]": (-(1.2 + 0.5) / 2 + (0.8 * 0.5 + 0.5 - 1.0) / 3) / 2}
    try:
        loss = grpo_loss.GRPOLoss(0.2, 0.0)
        sequence = loss(logp, old, response_mask=mask, advantages=advantages)
        token = loss(logp, old, response_mask=mask, advantages=token_advantages)
    except NotImplementedError as err:
        pytest.fail(f"finish grpo_loss first: the trainer runs your GRPOLoss, which still raises "
                    f"NotImplementedError ({err})")
    except Exception as err:  # noqa: BLE001 - any failure of the student's loss is reported as the loss's
        pytest.fail(f"fix grpo_loss first: GRPOLoss(0.2, 0.0)(logp, old, response_mask=..., advantages=...) raised "
                    f"{type(err).__name__}: {err} (run python tools/grade.py grpo_loss)")
    for what, value in (("advantages [B, G]", sequence), ("advantages [B, G, T]", token)):
        if not is_close(value, expected[what]):
            pytest.fail(f"fix grpo_loss first: on a hand-checked case with {what} your GRPOLoss gives "
                        f"{float(value):.6g}, expected {expected[what]:.6g}; the trainer tests run your loss "
                        f"(run python tools/grade.py grpo_loss)")


def require_ppo_loss(ppo_loss):
    """The trainer runs your compute_gae and PPOLoss: check them on hand-checked cases first."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 7.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2, 0.4], [0.3, 0.1, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    # gamma = lam = 0.5: delta_t = r_t + 0.5 V_{t+1} - V_t (V = 0 after the last response token),
    # A_t = delta_t + 0.25 A_{t+1}; row 1: deltas -0.4, 0.0, 0.6; row 2: -0.25, 1.9 (then padding: 0)
    expected_gae = [[-0.4 + 0.25 * (0.0 + 0.25 * 0.6), 0.0 + 0.25 * 0.6, 0.6], [-0.25 + 0.25 * 1.9, 1.9, 0.0]]
    expected_returns = [[expected_gae[0][0] + 0.5, expected_gae[0][1] + 0.2, 1.0], [expected_gae[1][0] + 0.3, 2.0, 0.0]]
    def row(*numbers):
        return torch.tensor([numbers], dtype=torch.float64)

    # two response tokens and one padding position holding garbage; ratio 1 on the response tokens:
    # policy loss = -mean(A) = -0.5; value loss = mean((V - R)^2) = 0.125; loss = -0.5 + 0.5 * 0.125
    expected_loss = -0.5 + 0.5 * 0.125
    try:
        advantages, returns = ppo_loss.compute_gae(rewards, values, 0.5, 0.5, mask)
        loss = ppo_loss.PPOLoss(0.2, 0.5, 0.0)(row(0.0, 0.0, 0.7), row(0.0, 0.0, 0.0), row(0.5, 1.0, 9.0),
                                               row(1.0, 1.0, -5.0), row(2.0, -1.0, 7.0), row(0.3, 0.3, 0.3),
                                               row(1.0, 1.0, 0.0))
    except NotImplementedError as err:
        pytest.fail(f"finish ppo_loss first: the trainer runs your compute_gae and PPOLoss, which still raise "
                    f"NotImplementedError ({err})")
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"fix ppo_loss first: compute_gae or PPOLoss raised {type(err).__name__}: {err} "
                    f"(run python tools/grade.py ppo_loss)")
    if not (is_close(advantages * mask, expected_gae) and is_close(returns * mask, expected_returns)):
        pytest.fail("fix ppo_loss first: compute_gae is wrong on a hand-checked case (gamma = lam = 0.5); the "
                    "trainer tests run it (run python tools/grade.py ppo_loss)")
    if not is_close(loss, expected_loss):
        pytest.fail(f"fix ppo_loss first: PPOLoss gives {float(loss):.6g} on a hand-checked case, expected "
                    f"{expected_loss:.6g}; the trainer tests run it (run python tools/grade.py ppo_loss)")
