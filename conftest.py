"""Repository-wide pytest options.

`--impl auto|exercises|solutions` chooses whose code the tests (and notebooks) run: it sets COURSE_IMPL,
which `training.impl` reads. `auto` means solutions/ when that folder exists, else exercises/.
"""
import os

import torch

# One thread: on this 2-core machine the tiny model gains nothing from two, and a second busy process makes
# two threads 10-50x slower. Same numbers either way (tests/test_sft.py checks determinism).
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--impl",
        choices=("auto", "exercises", "solutions"),
        default=None,
        help="whose implementation of the exercises to run (default: $COURSE_IMPL or auto)",
    )


def pytest_configure(config):
    impl = config.getoption("--impl")
    if impl:
        os.environ["COURSE_IMPL"] = impl
