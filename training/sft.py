"""Supervised fine-tuning (SFT): the warm start before RL.

Each step draws a fresh batch of training problems and minimises the cross-entropy of the answer tokens only:

    loss = -(1 / (N * A)) * sum_i sum_{t in answer} log p_theta(x_{i,t} | x_{i,<t})

The prompt tokens are inputs, never targets (they are random digits: there is nothing to learn about them), and
the final EOS is a target, so the model learns when to stop. AdamW, LR warmup then cosine decay (or constant).

Stopping early on purpose gives a WEAK checkpoint that RL can improve (held-out exact match 20-45%).
Measured on this repository's 2-core CPU machine (nano preset, batch 64, warmup 20):

  sort: 192 steps at lr 5e-4, cosine decay over the 192 steps: held-out exact match 41.2% / 22.6% / 40.4% for
        seeds 0 / 1 / 2 (seeds 3, 4: 20.0%, 39.8%). Accuracy climbs steeply here (~0% at step 100, >90% by
        step 300), so a few steps more or less move it a lot: keep the recipe as it is.
  add:  no fixed step count works: the model learns the carry suddenly (held-out accuracy jumps from ~10% to
        ~95% within ~100 steps), and when that happens depends on the seed (step ~2050 / ~950 / ~1500 for
        seeds 0 / 1 / 2 at lr 3e-3). So the weak recipe stops at the first check (every 2 steps) where greedy
        exact match on a fixed VALIDATION batch reaches 30%: 256 problems drawn from the training pool, never
        the held-out set, so the held-out evaluation stays untouched. lr 3e-3 constant, at most 3000 steps.
  sort_var: 230 steps at lr 5e-4, cosine over the 230 steps: 35.4% / 36.0% / 32.6% for seeds 0 / 1 / 2.

Full SFT (FULL below) reaches >= 99% held-out exact match on each task (sort_var: 100.0% for seed 0).
"""
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .checkpoint import atomic_torch_save, save_checkpoint
from .device import make_generator, seed_everything
from .evaluate import greedy_accuracy
from .model import make_model
from .runlog import RunLog, plot_curves
from .schedule import learning_rate, set_learning_rate
from .tasks import make_task
from .tokenizer import TOKENIZER

BATCH_SIZE = 64
VALIDATION_SIZE, VALIDATION_SEED = 512, 4_242  # training-pool problems for the stop_at rule
# Recipes per task, measured (see the module docstring and README). stop_at: stop once validation exact match
# reaches it (checked every check_every steps); None = run all the steps.
WEAK = {
    "sort": dict(steps=192, lr=5e-4, schedule="cosine", stop_at=None, check_every=10),
    "add": dict(steps=3000, lr=3e-3, schedule="constant", stop_at=0.27, check_every=2),
    "sort_var": dict(steps=230, lr=5e-4, schedule="cosine", stop_at=None, check_every=10),
}
FULL = {
    "sort": dict(steps=1000, lr=1e-3, schedule="cosine", stop_at=None, check_every=10),
    "add": dict(steps=4000, lr=3e-3, schedule="cosine", stop_at=None, check_every=10),
    "sort_var": dict(steps=1000, lr=1e-3, schedule="cosine", stop_at=None, check_every=10),
}


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Mean cross-entropy over the answer positions only.

    logits [N, L-1, V] predict targets [N, L-1] (the sequence shifted by one). The first answer token is the
    target at index prompt_len - 1, so positions < prompt_len - 1 (prompt tokens as targets) are left out.
    """
    answer_logits = logits[:, prompt_len - 1 :]
    answer_targets = targets[:, prompt_len - 1 :]
    return F.cross_entropy(answer_logits.reshape(-1, answer_logits.shape[-1]).float(), answer_targets.reshape(-1))


def sft_loss(model, batch) -> torch.Tensor:
    """Teacher forcing on cat(prompt, answer): one forward, loss on the answer tokens (EOS included)."""
    sequence = torch.cat([batch.prompts, batch.answers], dim=1)
    logits = model(sequence[:, :-1])
    return answer_loss(logits, sequence[:, 1:], batch.prompts.shape[1])


def validation_batch(task, size: int = VALIDATION_SIZE):
    """A fixed batch from the TRAINING pool (not the held-out set), for decisions such as early stopping."""
    return task.sample(size, make_generator(VALIDATION_SEED))


def train_sft(model, task, out_dir, *, steps, lr, batch_size=BATCH_SIZE, eval_every=50, seed=0,
              schedule="cosine", warmup=20, weight_decay=0.1, stop_at=None, check_every=10, preset="nano",
              resume=None, info=None, progress=True, on_step=None) -> dict:
    """Train `model` on `task` for `steps` updates; write metrics.jsonl, model.pt, curves.png, summary.json.

    resume: a checkpoint dict (from load_checkpoint) of an earlier call; training continues exactly where it
    stopped (same weights, optimizer state, data stream and hyperparameters). info: extra summary fields
    (impl, device, seed...). stop_at: stop early once greedy exact match on validation_batch(task) reaches
    this fraction (checked every check_every steps). on_step(step, record): called after each step (tests use
    it to interrupt a run).
    Returns the summary dict.
    """
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    hparams = dict(steps=steps, lr=lr, batch_size=batch_size, schedule=schedule, warmup=warmup,
                   weight_decay=weight_decay, eval_every=eval_every, seed=seed, stop_at=stop_at,
                   check_every=check_every)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    data = make_generator(seed + 1)  # the training problems' own random stream, always on CPU
    start, accuracy_before, wall_before = 0, None, 0.0
    if resume is not None:
        hparams = dict(resume["extra"]["hparams"], steps=steps)  # same run, possibly extended
        optimizer.load_state_dict(resume["optimizer"])
        data.set_state(resume["extra"]["data_rng"])
        torch.set_rng_state(resume["extra"]["torch_rng"])
        start, accuracy_before = resume["step"], resume["extra"]["accuracy_before"]
        if resume["extra"].get("stopped_early"):  # that run was done: nothing left to train
            hparams["steps"] = start
        wall_before = resume["extra"]["wall_time_s"]
    log = RunLog(out_dir, resume_step=start if resume is not None else None)
    eval_batch = task.eval_batch()
    check_batch = validation_batch(task) if hparams["stop_at"] is not None else None
    if accuracy_before is None:
        accuracy_before = greedy_accuracy(model, task, eval_batch)
        log.step({"step": 0, "accuracy": accuracy_before, "step_time_s": 0.0})

    def checkpoint(step, wall, stopped_early=False):
        extra = dict(hparams=hparams, data_rng=data.get_state(), torch_rng=torch.get_rng_state(), algo="sft",
                     accuracy_before=accuracy_before, wall_time_s=wall, stopped_early=stopped_early)
        save_checkpoint(out_dir / "model.pt", model, task=task, preset=preset, step=step, optimizer=optimizer,
                        extra=extra)

    model.train()
    bar = tqdm(total=hparams["steps"], initial=start, desc=f"SFT {task.name}", disable=not progress or None,
               dynamic_ncols=True, leave=False)
    accuracy, loss_value, t_start, last = None, float("nan"), time.perf_counter(), start
    for step in range(start + 1, hparams["steps"] + 1):
        t0 = time.perf_counter()
        rate = learning_rate(step - 1, hparams["steps"], hparams["lr"], hparams["warmup"], hparams["schedule"])
        set_learning_rate(optimizer, rate)
        batch = task.sample(hparams["batch_size"], data).to(device)
        loss = sft_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        record = {"step": step, "loss": loss_value, "lr": rate, "step_time_s": time.perf_counter() - t0}
        stop = False
        if check_batch is not None and step % hparams["check_every"] == 0:
            record["val_accuracy"] = greedy_accuracy(model, task, check_batch)
            stop = record["val_accuracy"] >= hparams["stop_at"]
        last = step
        if step % hparams["eval_every"] == 0 or step == hparams["steps"] or stop:
            accuracy = greedy_accuracy(model, task, eval_batch)
            record["accuracy"] = accuracy
            checkpoint(step, wall_before + time.perf_counter() - t_start, stopped_early=stop)
        log.step(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", acc="-" if accuracy is None else f"{accuracy:.0%}")
        if on_step is not None:
            on_step(step, record)
        if stop:
            break
    bar.close()
    wall = wall_before + time.perf_counter() - t_start
    if accuracy is None:  # nothing left to train (resumed a finished run): evaluate and save as is
        accuracy = greedy_accuracy(model, task, eval_batch)
        checkpoint(last, wall)
    records = log.records()
    log.close()
    plot_curves(log.metrics_path, out_dir / "curves.png", keys=("loss", "reward", "accuracy"))
    step_times = [r["step_time_s"] for r in records if r.get("step", 0) > 0]
    summary = dict(info or {}, task=task.name, task_options=task.options, algo="sft", preset=preset,
                   accuracy_before=accuracy_before, accuracy_after=accuracy, sft_steps=last,
                   sft_stop_at=hparams["stop_at"], sft_schedule=hparams["schedule"],
                   sft_lr=hparams["lr"], sft_wall_time_s=wall, final_loss=loss_value,
                   step_time_median_s=statistics.median(step_times) if step_times else None,
                   rl_steps=None, rl_wall_time_s=None, checkpoint=str(out_dir / "model.pt"))
    log.write_summary(summary)
    return summary


def train_weak(model, task, out_dir, *, seed=0, **settings) -> dict:
    """The documented weak checkpoint: train_sft with WEAK[task.name]'s recipe (steps, lr, schedule, stop_at,
    check_every), `settings` laid over it (e.g. progress=False, eval_every=..., preset=...). What `sft --weak`,
    `demo` and the lessons use, so every place gets the same weak start."""
    return train_sft(model, task, out_dir, **dict(WEAK[task.name], seed=seed, **settings))


# ---------------------------------------------------------------------------------------------- the weak start, cached
CACHE_FOLDER = Path(tempfile.gettempdir()) / "grpo-course-weak-models"
CODE_FILES = ("model.py", "sft.py", "schedule.py", "tasks.py", "tokenizer.py", "rewards.py")


def weak_cache_path(task, seed: int = 0, preset: str = "nano") -> Path:
    """Where weak_model keeps the weights: a name made from everything that decides them, the code and the torch
    thread count included (another count sums in another order), so stale weights are never reused."""
    plan = WEAK[task.name]
    digest = hashlib.sha256(repr((task.name, sorted(task.options.items()), sorted(plan.items()), seed, preset,
                                  BATCH_SIZE, torch.get_num_threads())).encode())
    for name in CODE_FILES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return CACHE_FOLDER / f"weak-{task.name}-{digest.hexdigest()[:16]}.pt"


def save_weak_model(model, task, seed: int = 0, preset: str = "nano") -> Path:
    """Keep weights trained with WEAK[task.name] from `seed` where weak_model looks for them (atomic write)."""
    return atomic_torch_save(model.state_dict(), weak_cache_path(task, seed, preset))


def weak_model(task_name: str = "sort", seed: int = 0, preset: str = "nano", device="cpu"):
    """(model, task, accuracy): the weak SFT checkpoint RL starts from, as `python -m training sft --weak` trains
    it (WEAK's recipe, batch BATCH_SIZE, warm-up 20). Trained once, then loaded from the temporary folder."""
    task = make_task(task_name)
    seed_everything(seed)
    model = make_model(preset, TOKENIZER.vocab_size, task.block_size)
    path = weak_cache_path(task, seed, preset)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        with tempfile.TemporaryDirectory() as out:
            train_weak(model, task, out, seed=seed, preset=preset, eval_every=WEAK[task_name]["steps"],
                       progress=False)
        save_weak_model(model, task, seed, preset)
    model.to(device).eval()
    return model, task, greedy_accuracy(model, task)
