"""The one RL run loop. `python -m training grpo|ppo|demo` and lessons 09-10 all train through `train`.

    accuracy before (greedy exact match on the held-out problems)         record 0
    for step = 1 .. steps:
        lr  <- schedule(step)                      on the policy's optimizer (the critic keeps its own)
        batch <- task.sample(prompts_per_step)     from the loop's own generator: every run with the same
                                                   data seed sees the same problems in the same order
        metrics <- trainer.training_step(batch)    GRPOTrainer or PPOTrainer: rollout, reward, advantages, update
        every eval_every steps, and at the last:   accuracy again (+ extra measurements, e.g. the KL to pi_ref)
        stop early once out of time or once the accuracy reaches a target

The loop knows nothing about flags, files or progress bars of its caller: plain values in, one record (a dict
of floats) per step out, and hooks for what a caller adds (a log file, checkpoints, snapshots of the weights).
"""
import time
from dataclasses import dataclass, field

import torch

from .evaluate import greedy_accuracy
from .schedule import learning_rate, set_learning_rate
from .tasks import Batch


@dataclass
class RunResult:
    records: list = field(default_factory=list)   # one dict per step, record 0 = before training
    stop_reason: str = "steps"                     # "steps" | "time budget" | "accuracy reached"
    wall_s: float = 0.0                            # seconds spent in training_step, evaluations excluded

    @property
    def accuracy_before(self):
        return self.records[0]["accuracy"] if self.records else None

    @property
    def accuracy_after(self):
        return next((r["accuracy"] for r in reversed(self.records) if r.get("accuracy") is not None), None)

    @property
    def steps(self) -> int:
        return self.records[-1]["step"] if self.records else 0


def train(trainer, task, *, steps, prompts_per_step, eval_every=10, lr=None, warmup=0, schedule="constant",
          data=None, data_seed=1, repeats_per_prompt=1, eval_batch=None, measure=None, on_record=None,
          on_evaluation=None, start_step=0, before=None, wall_before=0.0, time_budget_s=None,
          stop_at_accuracy=None) -> RunResult:
    """Train `trainer` (its policy in place) for `steps` steps on `task`; return the records.

    trainer: has training_step(batch) -> dict of floats, `optimizers` (policy first) and a policy `model` or
        `actor`. lr, warmup, schedule: the policy's learning rate per step (training.schedule); lr=None leaves
        the optimizer's rate alone.
    data: the torch.Generator of the training problems (default: a new one seeded with data_seed).
    repeats_per_prompt: rows per problem (PPO may sample a problem several times; GRPO's groups are the
        trainer's own business, so 1 there).
    eval_batch: the held-out problems (default task.eval_batch()); measure(model) -> dict: more numbers to
        record at every evaluation (e.g. the KL to the reference).
    on_record(record): after every step (a log file, a progress bar); on_evaluation(step, record): after
        every evaluation (a checkpoint, a copy of the weights).
    start_step, before, wall_before: continue a run that stopped at step `start_step` after `wall_before`
        seconds of steps, whose record 0 was `before` (resume).
    time_budget_s: stop once the steps took this many seconds; stop_at_accuracy: stop at the first
        evaluation that reaches it.
    Each record holds the trainer's metrics plus step, lr, step_time_s, wall_s (seconds in training_step so
    far), samples (completions sampled so far) and, at evaluations, accuracy and measure's numbers.
    """
    model = trainer.model if hasattr(trainer, "model") else trainer.actor
    data = data if data is not None else torch.Generator().manual_seed(data_seed)
    eval_batch = eval_batch if eval_batch is not None else task.eval_batch()
    device = next(model.parameters()).device
    rows_per_step = prompts_per_step * repeats_per_prompt * getattr(trainer, "group_size", 1)

    def evaluate():
        extra = measure(model) if measure is not None else {}
        return dict(extra, accuracy=greedy_accuracy(model, task, eval_batch))

    result = RunResult(records=[before or dict(evaluate(), step=0, samples=0, wall_s=0.0, step_time_s=0.0)])
    if before is None and on_record is not None:
        on_record(result.records[0])
    result.wall_s = wall_before
    for step in range(start_step + 1, steps + 1):
        rate = None
        if lr is not None:
            rate = learning_rate(step - 1, steps, lr, warmup, schedule)
            set_learning_rate(trainer.optimizers[0], rate)
        batch = task.sample(prompts_per_step, data).to(device)
        if repeats_per_prompt > 1:
            batch = Batch(batch.prompts.repeat_interleave(repeats_per_prompt, 0),
                          batch.answers.repeat_interleave(repeats_per_prompt, 0))
        start = time.perf_counter()
        metrics = trainer.training_step(batch)
        step_time = time.perf_counter() - start
        result.wall_s += step_time
        record = dict(metrics, step=step, lr=rate, step_time_s=step_time, wall_s=result.wall_s,
                      samples=step * rows_per_step)
        out_of_time = time_budget_s is not None and result.wall_s >= time_budget_s
        evaluated = step % eval_every == 0 or step == steps or out_of_time
        if evaluated:
            record.update(evaluate())
        result.records.append(record)
        if on_record is not None:
            on_record(record)
        if evaluated and on_evaluation is not None:
            on_evaluation(step, record)
        if out_of_time:
            result.stop_reason = "time budget"
            break
        if evaluated and stop_at_accuracy is not None and record["accuracy"] >= stop_at_accuracy:
            result.stop_reason = "accuracy reached"
            break
    return result
