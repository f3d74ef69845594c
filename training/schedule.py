"""The learning-rate schedule of every training run (SFT and RL): linear warm-up, then cosine or constant.

    lr(s) = base * min(1, (s + 1) / warmup) * c(s)
    c(s)  = 1                                                       (constant)
    c(s)  = 0.1 + 0.9 * (1 + cos(pi * s / total)) / 2               (cosine: from 1 down to 10% at s = total)

s counts optimizer steps from 0. The floor of 10% keeps the last steps learning a little.
"""
import math


def learning_rate(step: int, total: int, base: float, warmup: int, schedule: str) -> float:
    """The learning rate at step `step` (0-based) of `total`, peaking at `base` after `warmup` steps."""
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        return base * ramp
    return base * ramp * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total))))


def set_learning_rate(optimizer, rate: float) -> None:
    """Give every parameter group of `optimizer` the learning rate `rate`."""
    for group in optimizer.param_groups:
        group["lr"] = rate
