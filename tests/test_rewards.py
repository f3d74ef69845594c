import pytest
import torch

from training.rewards import exact_match, format_ok, partial_credit
from training.tasks import make_task
from training.tokenizer import EOS_ID, PAD_ID, TOKENIZER


def row(text, eos_at_end=True, pad_to=6):
    ids = TOKENIZER.encode(text) + ([EOS_ID] if eos_at_end else [])
    return ids + [PAD_ID] * (pad_to - len(ids))


ANSWER = torch.tensor([TOKENIZER.encode("123") + [EOS_ID]])  # A = 4


def rewards_of(fn, texts_and_eos, **kwargs):
    completions = torch.tensor([row(t, e) for t, e in texts_and_eos])
    return fn(completions, ANSWER.expand(len(texts_and_eos), -1), **kwargs).tolist()


CASES = [("123", True), ("123", False), ("124", True), ("1234", True), ("12", True), ("", True), ("923", True)]


def test_exact_match_by_hand():
    assert rewards_of(exact_match, CASES) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_partial_credit_by_hand():
    # positions: 3 digits + EOS. "123" w/o EOS -> 3/4 (PAD where EOS should be); "1234" -> 3/4 ('4' not EOS);
    # "12" EOS -> '1','2' right, EOS in slot 2 wrong, PAD in slot 3 wrong -> 2/4; "" -> 0; "923" -> 3/4.
    assert rewards_of(partial_credit, CASES) == [1.0, 0.75, 0.75, 0.75, 0.5, 0.0, 0.75]


def test_format_ok_by_hand():
    digits = TOKENIZER.encode("0123456789")
    got = rewards_of(format_ok, CASES + [("9+9", True)], allowed_ids=digits)
    # well formed = 3 digits then EOS, whatever the digits are
    assert got == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def test_completion_shorter_than_answer_gets_zero():
    short = torch.tensor([TOKENIZER.encode("12")])
    assert exact_match(short, ANSWER).item() == 0.0
    assert partial_credit(short, ANSWER).item() == 0.5


def test_task_reward_dispatch():
    task = make_task("add")
    batch = task.sample(8, torch.Generator().manual_seed(0))
    for kind in ("exact", "partial", "format"):
        r = task.reward(batch.answers, batch.answers, kind=kind)
        assert r.dtype == torch.float32 and r.shape == (8,) and torch.all(r == 1.0)
    wrong = batch.answers.clone()
    wrong[:, 0] = EOS_ID
    assert torch.all(task.reward(wrong, batch.answers, "exact") == 0.0)
    with pytest.raises(ValueError, match="unknown reward"):
        task.reward(batch.answers, batch.answers, kind="nope")
