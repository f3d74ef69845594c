"""Held-out evaluation: greedy decoding, exact match.

accuracy = (1/N) * sum_i exact_match(greedy(prompt_i), answer_i) over the task's fixed held-out set
(task.eval_batch(), problems that training never draws).
"""
import torch

from .rollout import greedy


def greedy_accuracy(model, task, batch=None, chunk_size: int = 500) -> float:
    """Fraction of held-out problems the model answers exactly right with argmax decoding (a float in [0, 1])."""
    batch = batch if batch is not None else task.eval_batch()
    device = next(model.parameters()).device
    right = 0.0
    for start in range(0, len(batch), chunk_size):
        prompts = batch.prompts[start : start + chunk_size].to(device)
        answers = batch.answers[start : start + chunk_size].to(device)
        completions = greedy(model, prompts, task.max_new_tokens)
        right += float(task.reward(completions, answers, kind="exact").sum())
    return right / len(batch)


def sample_table(model, task, n: int = 5, batch=None) -> str:
    """A few held-out problems with the model's greedy answer and the right one, one per line."""
    batch = batch if batch is not None else task.eval_batch()
    device = next(model.parameters()).device
    prompts, answers = batch.prompts[:n].to(device), batch.answers[:n].to(device)
    with torch.no_grad():
        completions = greedy(model, prompts, task.max_new_tokens)
    return task.show(prompts, completions, answers)
