"""Negative controls: known-wrong implementations that the graded tests must catch.

A control is written as text replacements applied to a reference solution file
(`solutions/<exercise>.py`), so it stays in step with the solution and copies no code.
Each `old` string must occur in the solution exactly once; a stale control is an error, not a pass.

Control modules in this folder (`*_controls.py`) each define `CONTROLS: list[Control]`.
These files hold near-solutions, so the student release leaves this folder out.
"""
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"


@dataclass(frozen=True)
class Control:
    name: str                                  # short id, e.g. "population_std"
    exercise: str                              # grpo_loss | ppo_loss | grpo_trainer | ppo_trainer
    replacements: tuple[tuple[str, str], ...]  # (old, new) pairs applied to solutions/<exercise>.py
    why: str                                   # the mistake a student would make, in one line


def apply(control: Control, text: str | None = None) -> str:
    """Return the solution source with the control's mistake put in."""
    if text is None:
        text = (SOLUTIONS / f"{control.exercise}.py").read_text()
    for old, new in control.replacements:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"control {control.name}: {old!r} occurs {count} times in {control.exercise}.py (need 1)")
        text = text.replace(old, new)
    return text


def all_controls() -> list[Control]:
    controls = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name.endswith("_controls"):
            controls += importlib.import_module(f"{__name__}.{info.name}").CONTROLS
    return controls
