"""Shared fixtures of the graded tests.

Each graded test carries `@pytest.mark.points(n)`. The module under test comes from the fixture
named after its exercise (`grpo_loss`, `ppo_loss`, `grpo_trainer`, `ppo_trainer`), which imports it
through `training.impl`, so `--impl` (or COURSE_IMPL) decides whose code is graded.
"""
import pytest

from training import impl as course_impl


def _exercise_fixture(name):
    @pytest.fixture(name=name)
    def fixture():
        return course_impl.load(name)
    return fixture


grpo_loss = _exercise_fixture("grpo_loss")
ppo_loss = _exercise_fixture("ppo_loss")
grpo_trainer = _exercise_fixture("grpo_trainer")
ppo_trainer = _exercise_fixture("ppo_trainer")
