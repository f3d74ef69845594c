"""The tasks: sorting digits and 3-digit arithmetic, with a fixed held-out set that training never sees.

    sort:  prompt "3141592653="   answer "1123455699" EOS
    add:   prompt "007+042="      answer "9400" EOS      (49, zero-padded to 4 digits "0049", then reversed)

Every prompt of a task has the same length (operands are zero-padded), so a batch of prompts is a plain [N, P]
LongTensor, and every answer has the same length A (EOS included). Reversing the sum, as minGPT's adder does,
lets the model write the lowest digit first, the order in which carries are computed.

Held-out set. A fixed hash of the prompt tokens puts every possible problem either in the held-out pool
(about 1 in HELD_OUT_EVERY) or in the training pool. `task.sample` rejects held-out problems, `task.eval_batch`
draws only held-out ones (from a fixed seed), so the evaluation problems can never appear in training.
"""
from dataclasses import dataclass

import torch

from . import rewards
from .tokenizer import EOS_ID, PAD_ID, TOKENIZER

OPS = {"add": "+", "sub": "-", "mul": "*"}
HELD_OUT_EVERY = 10  # about 1 problem in 10 is held out
EVAL_SIZE = 500
EVAL_SEED = 1_000_003
_DIGIT0 = TOKENIZER.encode("0")[0]  # digit d has id _DIGIT0 + d


class UnknownTaskError(ValueError):
    """Asked for a task (or a task option) that does not exist."""


@dataclass
class Batch:
    """A batch of problems: prompts [N, P] and answers [N, A] (answer tokens, the last one EOS)."""

    prompts: torch.Tensor
    answers: torch.Tensor

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def to(self, device) -> "Batch":
        return Batch(self.prompts.to(device), self.answers.to(device))


def held_out_mask(prompts: torch.Tensor) -> torch.Tensor:
    """[N, P] prompt ids -> bool [N]: True for the problems that belong to the held-out pool.

    key = (sum_i p_i * w_i) mod M, mixed by one multiply-add step mod M (M = 2^31 - 1, w_i fixed odd numbers);
    held out when key % HELD_OUT_EVERY == 0. All values stay below 2^62, so int64 never overflows.
    """
    m = 2_147_483_647
    positions = torch.arange(prompts.shape[1], device=prompts.device, dtype=torch.int64)
    weights = (positions * 2_654_435_761 + 97_531) % m | 1
    key = (prompts.long() * weights).sum(dim=1) % m
    key = (key * 1_103_515_245 + 12_345) % m
    return key % HELD_OUT_EVERY == 0


def _digits_to_ids(values: torch.Tensor, width: int) -> torch.Tensor:
    """[N] non-negative ints -> [N, width] digit ids, most significant first, zero-padded."""
    powers = 10 ** torch.arange(width - 1, -1, -1, device=values.device, dtype=torch.int64)
    return (values[:, None] // powers) % 10 + _DIGIT0


class Task:
    """A problem family. Subclasses define `_draw(n, generator) -> (prompts, answers)` and the lengths."""

    name: str
    prompt_len: int
    answer_len: int  # answer tokens including the final EOS
    answer_chars: str = "0123456789"  # what may appear before the EOS (for the format reward)

    def __init__(self, **options):
        self.options = options
        self.max_new_tokens = self.answer_len + 3  # a little slack past the longest correct answer
        self._eval = None

    @property
    def block_size(self) -> int:
        """The longest sequence a model sees on this task: prompt plus every generated token."""
        return self.prompt_len + self.max_new_tokens

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """n fresh training problems, never from the held-out pool; reproducible from the generator's state."""
        prompts, answers, have = [], [], 0
        while have < n:
            p, a = self._draw(max(2 * (n - have), 16), generator)
            keep = ~held_out_mask(p)
            prompts.append(p[keep])
            answers.append(a[keep])
            have += int(keep.sum())
        return Batch(torch.cat(prompts)[:n], torch.cat(answers)[:n])

    def eval_batch(self) -> Batch:
        """The fixed held-out set: EVAL_SIZE distinct held-out problems from a fixed seed (same on every call)."""
        if self._eval is None:
            generator = torch.Generator().manual_seed(EVAL_SEED)
            seen, rows = set(), []
            for _ in range(200):
                p, a = self._draw(4 * EVAL_SIZE, generator)
                keep = held_out_mask(p)
                for prompt, answer in zip(p[keep].tolist(), a[keep].tolist()):
                    if tuple(prompt) not in seen and len(rows) < EVAL_SIZE:
                        seen.add(tuple(prompt))
                        rows.append((prompt, answer))
                if len(rows) == EVAL_SIZE:
                    break
            self._eval = Batch(torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]))
        return Batch(self._eval.prompts.clone(), self._eval.answers.clone())

    def reward(self, completions: torch.Tensor, answers: torch.Tensor, kind: str = "exact") -> torch.Tensor:
        """Rule reward per completion, float [N]: "exact" (1/0), "partial" (fraction right), "format" (shape)."""
        if kind == "format":
            return rewards.format_ok(completions, answers, TOKENIZER.encode(self.answer_chars))
        if kind not in rewards.REWARDS:
            raise ValueError(f"unknown reward {kind!r}: choose one of {', '.join(rewards.REWARDS)}")
        return rewards.REWARDS[kind](completions, answers)

    def show(self, prompts: torch.Tensor, completions: torch.Tensor, answers: torch.Tensor | None = None) -> str:
        """Readable lines 'prompt completion [right answer]' for a few rows."""
        lines = []
        for i in range(prompts.shape[0]):
            line = TOKENIZER.decode(prompts[i]) + " " + TOKENIZER.decode(completions[i])
            if answers is not None:
                line += "   (right: " + TOKENIZER.decode(answers[i]) + ")"
            lines.append(line)
        return "\n".join(lines)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"make_task({self.name!r}{', ' if opts else ''}{opts})"


class SortTask(Task):
    """Sort `length` random digits 0..max_digit:  "3141592653=" -> "1123455699" EOS."""

    name = "sort"

    def __init__(self, length: int = 10, max_digit: int = 9):
        if not (1 <= length and 0 <= max_digit <= 9):
            raise UnknownTaskError(f"sort needs length >= 1 and max_digit in 0..9, got {length}, {max_digit}")
        self.length, self.max_digit = length, max_digit
        self.prompt_len, self.answer_len = length + 1, length + 1
        super().__init__(length=length, max_digit=max_digit)

    def _draw(self, n, generator):
        device = generator.device
        digits = torch.randint(0, self.max_digit + 1, (n, self.length), generator=generator, device=device)
        equals = torch.full((n, 1), TOKENIZER.encode("=")[0], device=device)
        eos = torch.full((n, 1), EOS_ID, device=device)
        prompts = torch.cat([digits + _DIGIT0, equals], dim=1)
        answers = torch.cat([digits.sort(dim=1).values + _DIGIT0, eos], dim=1)
        return prompts, answers


class VariableSortTask(SortTask):
    """Sort between min_length and length digits: answers of different lengths (the length-bias experiments).

        prompt  PAD PAD PAD 3 1 4 1 5 9 2 =      (left-padded with PAD to a fixed width)
        answer  1 1 2 3 4 5 9 EOS PAD PAD PAD    (right-padded with PAD after the EOS)

    Prompts keep one width, so a batch is still a plain [N, P] tensor; a longer list means a longer answer.
    """

    name = "sort_var"

    def __init__(self, length: int = 10, max_digit: int = 9, min_length: int = 2):
        if not 1 <= min_length <= length:
            raise UnknownTaskError(f"sort_var needs 1 <= min_length <= length, got {min_length}, {length}")
        self.min_length = min_length
        super().__init__(length=length, max_digit=max_digit)
        self.options = dict(length=length, max_digit=max_digit, min_length=min_length)

    def _draw(self, n, generator):
        prompts, answers = super()._draw(n, generator)
        sizes = torch.randint(self.min_length, self.length + 1, (n, 1), generator=generator, device=generator.device)
        slots = torch.arange(self.length, device=generator.device)
        digits = prompts[:, : self.length]
        kept = slots >= self.length - sizes                                  # the last `size` digits stay
        prompts = torch.cat([torch.where(kept, digits, PAD_ID), prompts[:, self.length :]], dim=1)
        big = _DIGIT0 + 10                                                   # sorts after every digit
        ordered = torch.where(kept, digits, big).sort(dim=1).values
        body = torch.where(slots < sizes, ordered, PAD_ID)
        answers = torch.cat([body, torch.full((n, 1), PAD_ID, device=generator.device)], dim=1)
        answers.scatter_(1, sizes, EOS_ID)
        return prompts, answers


class ArithmeticTask(Task):
    """a OP b with `digits`-digit operands, zero-padded:  "007+042=" -> "9400" EOS (reversed 0049).

    op "add": answer has digits+1 digits. op "sub": a sign ('+' or '-') then `digits` digits of |a-b|; with
    reverse_answer only the digits are reversed, the sign stays first. op "mul": 2*digits digits.
    """

    name = "add"

    def __init__(self, digits: int = 3, op: str = "add", reverse_answer: bool = True):
        if op not in OPS:
            raise UnknownTaskError(f"unknown op {op!r} for the arithmetic task: choose one of {', '.join(OPS)}")
        if not 1 <= digits <= 6:
            raise UnknownTaskError(f"the arithmetic task supports 1 to 6 digits, got {digits}")
        self.digits, self.op, self.reverse_answer = digits, op, reverse_answer
        self.answer_width = {"add": digits + 1, "sub": digits, "mul": 2 * digits}[op]
        self.prompt_len = 2 * digits + 2
        self.answer_len = self.answer_width + (op == "sub") + 1
        self.answer_chars = "0123456789" + ("+-" if op == "sub" else "")
        super().__init__(digits=digits, op=op, reverse_answer=reverse_answer)

    def _draw(self, n, generator):
        device = generator.device
        a = torch.randint(0, 10**self.digits, (n,), generator=generator, device=device)
        b = torch.randint(0, 10**self.digits, (n,), generator=generator, device=device)
        op_id = torch.full((n, 1), TOKENIZER.encode(OPS[self.op])[0], device=device)
        equals = torch.full((n, 1), TOKENIZER.encode("=")[0], device=device)
        prompts = torch.cat([_digits_to_ids(a, self.digits), op_id, _digits_to_ids(b, self.digits), equals], 1)
        c = {"add": a + b, "sub": a - b, "mul": a * b}[self.op]
        body = _digits_to_ids(c.abs(), self.answer_width)
        if self.reverse_answer:
            body = body.flip(1)
        parts = [body, torch.full((n, 1), EOS_ID, device=device)]
        if self.op == "sub":
            plus, minus = TOKENIZER.encode("+-")
            parts.insert(0, torch.where(c < 0, minus, plus)[:, None])
        return prompts, torch.cat(parts, dim=1)


TASK_CLASSES = {cls.name: cls for cls in (SortTask, ArithmeticTask, VariableSortTask)}
TASKS = tuple(TASK_CLASSES)


def make_task(name: str, **options) -> Task:
    """make_task("sort") or make_task("add", digits=3, op="add", reverse_answer=True)."""
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    cls = TASK_CLASSES[name]
    try:
        return cls(**options)
    except TypeError as err:
        raise UnknownTaskError(f"bad option for task {name!r}: {err}") from None
