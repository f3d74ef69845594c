import torch
from torch.nn import functional as F

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.device import seed_everything
from training.model import make_model
from training.runlog import read_metrics
from training.schedule import learning_rate
from training.sft import answer_loss, sft_loss, train_sft
from training.tasks import make_task
from training.tokenizer import TOKENIZER

TASK = make_task("sort")
P, A, V = TASK.prompt_len, TASK.answer_len, TOKENIZER.vocab_size


def test_answer_loss_ignores_prompt_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, P + A - 1, V, generator=g)
    targets = torch.randint(0, V, (4, P + A - 1), generator=g)
    loss = answer_loss(logits, targets, P)
    expected = F.cross_entropy(logits[:, P - 1 :].reshape(-1, V), targets[:, P - 1 :].reshape(-1))
    assert torch.allclose(loss, expected, rtol=1e-6)
    moved_prompt = logits.clone()
    moved_prompt[:, : P - 1] += 5 * torch.randn(4, P - 1, V, generator=g)
    changed_targets = targets.clone()
    changed_targets[:, : P - 1] = (changed_targets[:, : P - 1] + 1) % V
    assert torch.equal(answer_loss(moved_prompt, changed_targets, P), loss), "prompt positions must not count"
    moved_answer = logits.clone()
    moved_answer[:, P - 1] += 5 * torch.randn(4, V, generator=g)
    assert not torch.allclose(answer_loss(moved_answer, targets, P), loss), "answer positions (EOS too) count"
    moved_eos = logits.clone()
    moved_eos[:, -1] += 5 * torch.randn(4, V, generator=g)
    assert not torch.allclose(answer_loss(moved_eos, targets, P), loss), "the final EOS is a target"


def test_sft_loss_is_teacher_forcing_on_the_answer():
    seed_everything(0)
    model = make_model("nano", V, TASK.block_size)
    batch = TASK.sample(8, torch.Generator().manual_seed(1))
    sequence = torch.cat([batch.prompts, batch.answers], dim=1)
    log_probs = F.log_softmax(model(sequence[:, :-1]), dim=-1)
    by_hand = -torch.stack([log_probs[:, P - 1 + j].gather(1, batch.answers[:, j : j + 1]).squeeze(1)
                            for j in range(A)], dim=1).mean()
    assert torch.allclose(sft_loss(model, batch), by_hand, rtol=1e-5)


def test_learning_rate_schedule():
    assert learning_rate(0, 100, 1.0, 10, "cosine") == 0.1
    assert learning_rate(9, 100, 1.0, 10, "constant") == 1.0
    assert abs(learning_rate(100, 100, 1.0, 10, "cosine") - 0.1) < 1e-12
    assert abs(learning_rate(50, 100, 1.0, 0, "cosine") - 0.55) < 1e-12


def run(out, steps=8, seed=0, on_step=None, resume=None):
    seed_everything(seed)
    if resume is None:
        model = make_model("nano", V, TASK.block_size)
    else:
        model, _ = model_from_checkpoint(out / "model.pt")
    train_sft(model, TASK, out, steps=steps, lr=3e-3, batch_size=16, eval_every=4, seed=seed, warmup=2,
              progress=False, on_step=on_step, resume=resume)
    return [{k: v for k, v in r.items() if k != "step_time_s"} for r in read_metrics(out / "metrics.jsonl")]


def test_same_seed_same_losses(tmp_path):
    a, b, c = run(tmp_path / "a"), run(tmp_path / "b"), run(tmp_path / "c", seed=1)
    assert a == b
    assert [r["loss"] for r in a if "loss" in r] != [r["loss"] for r in c if "loss" in r]


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    whole = run(tmp_path / "whole", steps=12)

    def crash(step, record):
        if step == 10:
            raise KeyboardInterrupt

    try:
        run(tmp_path / "cut", steps=12, on_step=crash)
    except KeyboardInterrupt:
        pass
    ckpt = load_checkpoint(tmp_path / "cut" / "model.pt")
    assert ckpt["step"] == 8, "the last checkpoint before the crash"
    resumed = run(tmp_path / "cut", steps=12, resume=ckpt)
    assert [r["step"] for r in resumed] == list(range(13))
    assert resumed == whole
    summary = (tmp_path / "cut" / "summary.json").read_text()
    assert '"rl_steps": null' in summary and (tmp_path / "cut" / "curves.png").stat().st_size > 0


def test_stop_at_stops_on_the_validation_batch_which_is_never_held_out(tmp_path):
    from training.sft import validation_batch
    from training.tasks import held_out_mask

    assert not held_out_mask(validation_batch(TASK).prompts).any()
    seed_everything(0)
    model = make_model("nano", V, TASK.block_size)
    summary = train_sft(model, TASK, tmp_path, steps=50, lr=1e-3, batch_size=8, eval_every=100, stop_at=0.0,
                        check_every=3, progress=False)
    assert summary["sft_steps"] == 3 and load_checkpoint(tmp_path / "model.pt")["step"] == 3
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[-1]["step"] == 3 and "val_accuracy" in records[-1] and "accuracy" in records[-1]
