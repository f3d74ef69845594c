import pytest
import torch

from training.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint,
                                 task_from_checkpoint)
from training.model import ValueModel, make_model
from training.tasks import make_task
from training.tokenizer import TOKENIZER


def test_round_trip(tmp_path):
    task = make_task("add", op="sub")
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 3, dtype=torch.long)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, task=task, preset="nano", step=7,
                           optimizer=optimizer, extra={"note": "hi"})
    assert not list(tmp_path.glob("run/*.tmp")), "the temporary file must be renamed away"
    loaded, ckpt = model_from_checkpoint(path, "cpu")
    ids = torch.randint(0, TOKENIZER.vocab_size, (2, 6))
    assert torch.equal(loaded(ids), model(ids))
    assert ckpt["step"] == 7 and ckpt["preset"] == "nano" and ckpt["extra"] == {"note": "hi"}
    assert ckpt["optimizer"]["state"], "optimizer state must be saved"
    rebuilt = task_from_checkpoint(ckpt)
    assert rebuilt.op == "sub" and torch.equal(rebuilt.eval_batch().prompts, task.eval_batch().prompts)


def test_value_model_round_trip(tmp_path):
    critic = ValueModel(make_model("nano", TOKENIZER.vocab_size, 16).config)
    save_checkpoint(tmp_path / "critic.pt", critic, task="sort", preset="nano", step=0)
    loaded, _ = model_from_checkpoint(tmp_path / "critic.pt")
    assert isinstance(loaded, ValueModel)


def test_missing_and_corrupt_checkpoints_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    model = make_model("nano", TOKENIZER.vocab_size, 16)
    good = save_checkpoint(tmp_path / "good.pt", model, task="add", preset="nano", step=1)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a course checkpoint"):
        load_checkpoint(foreign)
    for err_path in (tmp_path / "nope.pt", garbage):
        try:
            load_checkpoint(err_path)
        except CheckpointError as err:
            assert "\n" not in str(err)
