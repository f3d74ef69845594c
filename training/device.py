"""Where the work runs, and seeding: the same seed gives the same numbers on CPU."""
import random

import numpy as np
import torch


class DeviceError(ValueError):
    """A device that this machine does not have."""


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when a GPU is visible, else cpu; "cpu"; "cuda" (an error when there is no GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
        return torch.device("cuda")
    raise DeviceError(f"unknown device {name!r}: choose auto, cpu or cuda")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int, device="cpu") -> torch.Generator:
    """A private random stream (for data or sampling) that nothing else draws from."""
    return torch.Generator(device=device).manual_seed(seed)
