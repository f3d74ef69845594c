"""Checkpoints: the model's weights plus everything needed to rebuild it, and (optionally) to resume training.

A checkpoint is one torch.save'd dict: format, model_class, config, model (state_dict), task {name, options},
preset, step, optimizer (state_dict or None), extra (anything else: RNG states, the metric history...).
Writes are atomic: save to `<path>.tmp`, then os.replace, so a crash mid-write never leaves a broken model.pt.
"""
import os
from dataclasses import asdict
from pathlib import Path

import torch

from .model import GPT, GPTConfig, ValueModel
from .tasks import make_task

FORMAT = "course-checkpoint-v1"
MODEL_CLASSES = {"GPT": GPT, "ValueModel": ValueModel}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not one of ours (one clear line)."""


def save_checkpoint(path, model, *, task, preset, step, optimizer=None, extra=None) -> Path:
    """Atomically write model (+ optimizer state, + extra) to path. `task` is a Task (or a task name)."""
    if isinstance(task, str):
        task_info = {"name": task, "options": {}}
    else:
        task_info = {"name": task.name, "options": dict(task.options)}
    payload = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "config": asdict(model.config),
        "model": model.state_dict(),
        "task": task_info,
        "preset": preset,
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra": extra or {},
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj, path) -> Path:
    """torch.save to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path, device="cpu") -> dict:
    """Read a checkpoint dict (tensors mapped to `device`); CheckpointError when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not a checkpoint ({type(err).__name__})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a course checkpoint (no {FORMAT!r} marker)")
    return ckpt


def model_from_checkpoint(path, device="cpu"):
    """Rebuild the saved model on `device`: returns (model, ckpt)."""
    ckpt = load_checkpoint(path, device)
    cls = MODEL_CLASSES.get(ckpt.get("model_class"))
    if cls is None:
        raise CheckpointError(f"{path} holds an unknown model class {ckpt.get('model_class')!r}")
    model = cls(GPTConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the saved config ({str(err).splitlines()[0]})")
    return model.to(device), ckpt


def task_from_checkpoint(ckpt: dict):
    """The Task the checkpoint was trained on."""
    return make_task(ckpt["task"]["name"], **ckpt["task"]["options"])
