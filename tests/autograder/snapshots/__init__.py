"""Stored reference values for the graded tests, and the one tolerance every graded comparison uses.

`<exercise>.json` holds seeded inputs (rounded, readable) and the reference solution's outputs in
float64. `tools/make_snapshots.py` writes them; only instructors run it (it needs solutions/), so
grading a student release never imports a solution.

Tolerance, scaled to each value's size:  |actual - expected| <= RTOL * |expected| + ATOL * max(1, |expected|).
Never an absolute tolerance larger than the values checked: a zero loss cannot pass a test of small values.
"""
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RTOL = 1e-4
ATOL = 1e-6


def load_snapshot(exercise: str) -> dict:
    """The stored snapshot of an exercise (a dict, as written by tools/make_snapshots.py)."""
    return json.loads((HERE / f"{exercise}.json").read_text())


def tensor(data, dtype=torch.float64) -> torch.Tensor:
    """A JSON list (or number) as a tensor; masks stay 0/1 numbers in the file."""
    return torch.tensor(data, dtype=dtype)


def assert_close(actual, expected, what: str, hint: str = "") -> None:
    """Fail with one readable line when `actual` differs from `expected` beyond the scaled tolerance.

    `what` names the quantity ("advantages", "loss"); `hint` names the likely mistake.
    """
    if not isinstance(actual, torch.Tensor):
        actual = torch.tensor(actual, dtype=torch.float64)
    actual = actual.detach().to(torch.float64).cpu()
    expected = torch.as_tensor(expected, dtype=torch.float64)
    hint = f" {hint}" if hint else ""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}.{hint}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{what} holds NaN or inf: {_short(actual)}.{hint}")
    tolerance = RTOL * expected.abs() + ATOL * expected.abs().clamp(min=1.0)
    wrong = (actual - expected).abs() > tolerance
    if wrong.any():
        where = tuple(int(i) for i in wrong.nonzero()[0])
        at = f" at index {where}" if where else ""
        raise AssertionError(
            f"{what}{at}: got {actual[where].item():.6g}, expected {expected[where].item():.6g} "
            f"({int(wrong.sum())} of {wrong.numel()} values off).{hint}"
        )


def snapshot_label(class_name: str, config: dict) -> str:
    """'snapshot GRPOLoss(kl_beta=0.0, ...)': names a stored case in a failure message."""
    return f"snapshot {class_name}({', '.join(f'{key}={value!r}' for key, value in config.items())})"


def assert_metrics(metrics: dict, expected: dict, label: str) -> None:
    """Every stored metric is present and close to its reference value."""
    for key, value in expected.items():
        if key not in metrics:
            raise AssertionError(f"{label}: metrics has no {key!r}")
        assert_close(metrics[key], value, f"{label} metrics[{key!r}]")


def is_close(actual, expected) -> bool:
    """True when `assert_close` would pass (for diagnosing which known mistake a wrong answer matches)."""
    try:
        assert_close(actual, expected, "value")
    except AssertionError:
        return False
    return True


def _short(values: torch.Tensor) -> str:
    flat = values.flatten().tolist()
    return str([round(v, 4) for v in flat[:8]]) + (" ..." if len(flat) > 8 else "")
