import pytest
import torch

from training.tasks import TASKS, UnknownTaskError, held_out_mask, make_task
from training.tokenizer import EOS_ID, TOKENIZER


def texts(batch):
    return [(TOKENIZER.decode(p), TOKENIZER.decode(a)) for p, a in zip(batch.prompts, batch.answers)]


def test_sort_answers_are_the_sorted_digits():
    task = make_task("sort")
    batch = task.sample(200, torch.Generator().manual_seed(0))
    assert batch.prompts.shape == (200, task.prompt_len) == (200, 11)
    assert batch.answers.shape == (200, task.answer_len) == (200, 11)
    assert torch.all(batch.answers[:, -1] == EOS_ID)
    for prompt, answer in texts(batch):
        assert prompt.endswith("=") and answer == "".join(sorted(prompt[:-1]))


@pytest.mark.parametrize("op,reverse", [("add", True), ("add", False), ("sub", True), ("mul", False)])
def test_arithmetic_answers_are_right(op, reverse):
    task = make_task("add", op=op, reverse_answer=reverse)
    batch = task.sample(300, torch.Generator().manual_seed(1))
    assert batch.prompts.shape[1] == task.prompt_len == 8
    assert torch.all(batch.answers[:, -1] == EOS_ID)
    symbol = {"add": "+", "sub": "-", "mul": "*"}[op]
    for prompt, answer in texts(batch):
        assert len(prompt) == 8 and prompt[3] == symbol and prompt[-1] == "="
        a, b = int(prompt[:3]), int(prompt[4:7])
        value = {"add": a + b, "sub": a - b, "mul": a * b}[op]
        sign = ""
        if op == "sub":
            sign, answer = answer[0], answer[1:]
            assert sign == ("-" if value < 0 else "+")
        digits = answer[::-1] if reverse else answer
        assert len(digits) == task.answer_len - 1 - (op == "sub")
        assert int(digits) == abs(value)


def test_lengths_fit_the_answer():
    for name in TASKS:
        task = make_task(name)
        assert task.max_new_tokens >= task.answer_len
        assert task.block_size == task.prompt_len + task.max_new_tokens


def test_held_out_set_is_fixed_and_disjoint_from_training():
    task = make_task("add")
    eval_a, eval_b = task.eval_batch(), make_task("add").eval_batch()
    assert len(eval_a) == 500
    assert torch.equal(eval_a.prompts, eval_b.prompts) and torch.equal(eval_a.answers, eval_b.answers)
    held = {tuple(p) for p in eval_a.prompts.tolist()}
    assert len(held) == 500, "held-out problems must be distinct"
    assert held_out_mask(eval_a.prompts).all()
    train = task.sample(50_000, torch.Generator().manual_seed(3))
    assert not held_out_mask(train.prompts).any()
    assert held.isdisjoint(tuple(p) for p in train.prompts.tolist())
    # the hash holds out about 1 problem in 10 of the raw draws
    raw, _ = task._draw(50_000, torch.Generator().manual_seed(4))
    assert 0.08 < held_out_mask(raw).float().mean().item() < 0.12


def test_sample_is_reproducible_from_the_generator():
    task = make_task("sort")
    a = task.sample(64, torch.Generator().manual_seed(7))
    b = task.sample(64, torch.Generator().manual_seed(7))
    c = task.sample(64, torch.Generator().manual_seed(8))
    assert torch.equal(a.prompts, b.prompts) and not torch.equal(a.prompts, c.prompts)


def test_unknown_task_and_bad_options():
    with pytest.raises(UnknownTaskError, match="unknown task 'reverse'"):
        make_task("reverse")
    with pytest.raises(UnknownTaskError, match="op"):
        make_task("add", op="div")
    with pytest.raises(UnknownTaskError):
        make_task("sort", colour="red")
