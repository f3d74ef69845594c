"""Bookkeeping the trainers share: reshaping a group batch, selecting rows, and averaging metrics over steps.

None of this is the algorithm; it is what every trainer needs around it, given so that the exercises
(solutions/grpo_trainer.py, solutions/ppo_trainer.py) can stay about GRPO and PPO.

    flatten_groups(x)              [B, G, ...] -> [B * G, ...]   row b * G + g is sample g of prompt b
    unflatten_groups(x, G)         [B * G, ...] -> [B, G, ...]   the inverse
    select_rows(items, index)      the rows `index` of every tensor in a dict or NamedTuple (None stays None)
    rollout_metrics(rewards, solved, mask)   reward_mean, solved, response_length of one rollout
    StepMetrics                    averages over the optimizer steps of one update, and the losses skipped
"""
import torch


def flatten_groups(x: torch.Tensor) -> torch.Tensor:
    """[B, G, ...] -> [B * G, ...]: the G samples of prompt b become rows b * G .. b * G + G - 1.

    This is the layout `training.rollout.generate(..., num_samples=G)` returns and `sequence_logprobs` reads.
    """
    return x.flatten(0, 1)


def unflatten_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B * G, ...] -> [B, G, ...], the inverse of flatten_groups: rows b * G .. b * G + G - 1 become group b."""
    if x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows do not split into groups of {group_size}")
    return x.unflatten(0, (-1, group_size))


def select_rows(items, index):
    """The rows `index` (a bool mask or a tensor of indices over dim 0) of every tensor in `items`.

    items: a dict of tensors (PPO's experiences) or a NamedTuple of tensors (GRPO's GroupOutputs, whose rows
    are whole groups); the result has the same type. None values stay None. Nothing is copied in place.
    """
    def pick(value):
        return None if value is None else value[index]

    if isinstance(items, dict):
        return {key: pick(value) for key, value in items.items()}
    return type(items)(*(pick(value) for value in items))


@torch.no_grad()
def rollout_metrics(rewards: torch.Tensor, solved: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """What a rollout looked like, as floats to log.

    rewards: the task reward of every sample (any shape, e.g. [B, G] or [N]); solved: 1.0 where the sample is
    exactly right (same shape); mask: the response mask, the rewards' shape plus T.

        reward_mean       the mean task reward
        solved            the share of samples that are exactly right (the reward may be partial credit)
        response_length   the mean number of response tokens (EOS included)
    """
    return {
        "reward_mean": rewards.float().mean().item(),
        "solved": solved.float().mean().item(),
        "response_length": mask.float().sum(dim=-1).mean().item(),
    }


class StepMetrics:
    """The metrics of one update: averages over its optimizer steps, and how many losses were not finite.

    Call `skip_nonfinite(loss)` on every loss before stepping on it: it returns True (and counts the loss) when
    the loss is NaN or inf, which must not reach the optimizer: one such step turns every weight into NaN.
    Call `add(metrics, **more)` once per optimizer step taken, with the loss's metrics (a dict of floats) and
    anything else worth averaging (tensors of one element become floats). `summary()` then returns

        {each key: its mean over the steps, "optimizer_steps": steps, "nonfinite_losses": skipped}

    and, when no step was taken, {"loss": None, "optimizer_steps": 0, "nonfinite_losses": skipped}.
    """

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.nonfinite = 0

    def skip_nonfinite(self, loss: torch.Tensor) -> bool:
        """True (and counted) when `loss` is NaN or inf: do not step on it."""
        if bool(torch.isfinite(loss.detach()).all()):
            return False
        self.nonfinite += 1
        return True

    def add(self, metrics: dict | None = None, **more) -> None:
        """Record the metrics of one optimizer step."""
        for key, value in {**(metrics or {}), **more}.items():
            if value is None:
                continue
            value = value.item() if isinstance(value, torch.Tensor) else float(value)
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def summary(self) -> dict:
        """The means over the recorded steps, with optimizer_steps and nonfinite_losses."""
        if self.steps == 0:
            averages = {"loss": None}
        else:
            averages = {key: total / self.steps for key, total in self.sums.items()}
        return dict(averages, optimizer_steps=self.steps, nonfinite_losses=self.nonfinite)

