"""Which implementation of the exercises runs: the student's (`exercises/`) or the reference (`solutions/`).

This is the one place that decides. Everything else asks `load("grpo_loss")` and gets a module.
The choice comes from the argument, else the COURSE_IMPL environment variable, else "auto":
solutions/ when that folder exists (the instructor's copy), exercises/ otherwise (the student release).
"""
import importlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHOICES = ("auto", "exercises", "solutions")
EXERCISES = ("grpo_loss", "ppo_loss", "grpo_trainer", "ppo_trainer")


class ImplError(ValueError):
    """A choice of implementation that cannot be honoured (one clear line for the user)."""


def has_solutions() -> bool:
    return (ROOT / "solutions" / "__init__.py").exists()


def resolve(impl: str | None = None) -> str:
    """Turn auto|exercises|solutions (or None: $COURSE_IMPL, default auto) into exercises|solutions."""
    impl = impl or os.environ.get("COURSE_IMPL") or "auto"
    if impl not in CHOICES:
        raise ImplError(f"unknown implementation {impl!r}: choose one of {', '.join(CHOICES)}")
    if impl == "auto":
        return "solutions" if has_solutions() else "exercises"
    if impl == "solutions" and not has_solutions():
        raise ImplError("this copy of the course has no solutions/ folder (student release): use --impl exercises")
    return impl


def load(exercise: str, impl: str | None = None):
    """Import and return the module `<impl>.<exercise>`, e.g. load("grpo_loss") -> solutions.grpo_loss."""
    if exercise not in EXERCISES:
        raise ImplError(f"unknown exercise {exercise!r}: choose one of {', '.join(EXERCISES)}")
    return importlib.import_module(f"{resolve(impl)}.{exercise}")
