"""Rule-based rewards: plain functions of the sampled completion and the right answer.

Shapes: completions [N, T] (token ids as rollout returns them: PAD after the first EOS), answers [N, A] (the right
answer's tokens, the last one EOS). Each function returns a float tensor [N]. No model is involved: the reward is
a rule a person could check by hand, which is what makes these tasks good for learning RL.
"""
import torch

from .rollout import response_mask
from .tokenizer import EOS_ID


def _first_answer_slots(completions: torch.Tensor, answer_len: int) -> torch.Tensor:
    """The first A tokens of each completion, PAD-filled on the right if the completion is shorter than A."""
    n, t = completions.shape
    if t >= answer_len:
        return completions[:, :answer_len]
    pad = completions.new_zeros(n, answer_len - t)
    return torch.cat([completions, pad], dim=1)


def exact_match(completions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """r = 1 if the completion up to and including its first EOS equals the answer, else 0.

    Because the answer ends with EOS and holds no other EOS, this is: c[j] == a[j] for every j < A.
    """
    head = _first_answer_slots(completions, answers.shape[1])
    return (head == answers).all(dim=1).float()


def _answer_positions(answers: torch.Tensor) -> torch.Tensor:
    """bool [N, A]: the positions up to and including each answer's EOS (all A of them when answers are not
    padded; fewer for the variable-length task, whose answers are PAD-filled after their EOS)."""
    return response_mask(answers).bool()


def partial_credit(completions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """r = (1/n) * sum_{j<n} [c[j] == a[j]]: the fraction of the answer's n positions (digits and its EOS) right.

    r == 1 exactly when exact_match == 1, so partial credit is a denser signal with the same optimum.
    """
    head = _first_answer_slots(completions, answers.shape[1])
    positions = _answer_positions(answers).float()
    return ((head == answers).float() * positions).sum(dim=1) / positions.sum(dim=1)


def format_ok(completions: torch.Tensor, answers: torch.Tensor, allowed_ids=None) -> torch.Tensor:
    """r = 1 if the completion is well formed: as many answer characters as the answer has, then EOS; else 0.

    An answer character is any id in `allowed_ids` (default: every id except PAD and EOS). Whether the
    characters are the *right* ones does not matter here: this rewards the shape of an answer, not its content.
    """
    head = _first_answer_slots(completions, answers.shape[1])
    positions = _answer_positions(answers)
    is_answer_eos = positions & (answers == EOS_ID)
    body = positions & ~is_answer_eos
    if allowed_ids is None:
        char_ok = head > EOS_ID
    else:
        char_ok = torch.isin(head, torch.as_tensor(list(allowed_ids), device=completions.device))
    body_ok = (char_ok | ~body).all(dim=1)
    eos_ok = ((head == EOS_ID) | ~is_answer_eos).all(dim=1)
    return (body_ok & eos_ok).float()


REWARDS = {"exact": exact_match, "partial": partial_credit, "format": format_ok}
REWARD_KINDS = tuple(REWARDS)  # the names `task.reward(..., kind=...)`, the trainers and --reward accept
