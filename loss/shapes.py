"""Input checks shared by the losses: a wrong shape is one clear ValueError, not a silent broadcast."""
import torch


def check_same_shape(name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise ValueError unless every tensor in `others` (None is skipped) has the shape of `reference`."""
    shape = tuple(reference.shape)
    for other_name, tensor in others.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{other_name} must have the shape of {name} {shape}, got {tuple(tensor.shape)}")
