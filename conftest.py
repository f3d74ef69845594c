"""Repository-wide pytest options.

`--impl auto|exercises|solutions` chooses whose code the tests (and notebooks) run: it sets COURSE_IMPL,
which `training.impl` reads. `auto` means solutions/ when that folder exists, else exercises/.
"""
import os


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
