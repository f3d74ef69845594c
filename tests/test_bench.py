"""The bench's bookkeeping: FLOP counting, the matmul replay, the table and bench.json. No timing is asserted."""
import argparse
import json

import torch

from training import bench
from training.model import GPT, GPTConfig
from training.rl_metrics import forward_flops, grpo_step_flops
from training.rollout import generate, sequence_logprobs
from training.tasks import make_task
from training.tokenizer import TOKENIZER

TASK = make_task("sort")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=TASK.block_size, n_layer=2, n_head=2, n_embd=16))


def test_flop_counter_sees_what_the_formula_counts():
    """The hook counts the shapes the model really ran: the shared rollout and one training pass of a step."""
    model = tiny_model()
    prompts = TASK.sample(4, torch.Generator().manual_seed(0)).prompts
    counter = bench.FlopCounter(model)
    r = generate(model, prompts, TASK.max_new_tokens, generator=torch.Generator().manual_seed(1), num_samples=3)
    t = r.completions.shape[1]
    rollout = counter.flops
    sequence_logprobs(model, prompts.repeat_interleave(3, dim=0), r.completions)  # with grad: counted 3x
    counter.remove()
    p = prompts.shape[1]
    expected = grpo_step_flops(model.config, 12, p, t, num_iterations=1, reference_pass=False, group_size=3)
    assert abs(counter.flops - expected) < 1e-6 * expected
    passes = counter.flops - rollout
    assert abs(passes - 3 * (forward_flops(model.config, 4, p - 1) + forward_flops(model.config, 12, t, p - 1))) < 1
    unshared = grpo_step_flops(model.config, 12, p, t, 1, False, group_size=1)
    assert unshared > expected, "sharing the prompt saves FLOPs"


def test_forward_flops_of_a_cached_position_matches_the_old_formula():
    config = tiny_model().config
    # one new position after 9 cached ones costs what the old rule (a full 10-token pass / 10) gave for it,
    # up to the attention term, which now counts the real context
    assert forward_flops(config, 1, 1, context=9) > forward_flops(config, 1, 1)
    assert forward_flops(config, 3, 5) == 3 * forward_flops(config, 1, 5)


def test_gemm_capture_and_replay_count_two_flops_per_multiply_add():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    bias = torch.randn(16)
    x, y = torch.randn(4, 8, 5), torch.randn(4, 5, 3)
    shapes = bench.gemm_shapes(lambda: (a @ b, torch.addmm(bias, a, b), torch.bmm(x, y)))
    assert [name for name, _ in shapes] == ["aten::mm", "aten::addmm", "aten::bmm"]
    flops, seconds = bench.gemm_replay(shapes, torch.device("cpu"), repeats=2)
    assert flops == 2 * (64 * 32 * 16) * 2 + 2 * 4 * 8 * 5 * 3
    assert seconds > 0


def test_arguments_and_table():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--vs-trl", "--repeats", "3"])
    assert args.vs_trl and args.repeats == 3 and args.device == "auto" and not args.profile
    results = {
        "device": "cpu", "torch_threads": 2, "rollout_rows": 256, "rollout_tokens_per_s_cached": 1e5,
        "rollout_tokens_per_s_uncached": 2e4, "kv_cache_speedup": 5.0, "rollout_tokens_per_s_grouped": 1.5e5,
        "matmul_gflops": 90.0, "matmul_gflops_by_shape": {"square 1024": 90.0}, "work": dict(bench.WORK),
        "grpo_step_ms": 50.0, "grpo_step_cpu_ms": 60.0, "step_gflop": 2.0, "step_gflop_unshared": 3.5, "step_gflop_per_s": 40.0,
        "train_pass_ms": 20.0, "train_pass_gemm_gflop": 1.5, "train_pass_gflop_per_s": 75.0,
        "train_pass_matmul_limit_gflop_per_s": 100.0, "matmul_fraction": 0.4, "train_pass_gemms": 70,
    }
    table = bench.format_table(results)
    assert "50.0 ms" in table and "40%" in table and "TRL" not in table
    table = bench.format_table(dict(results, trl_version="1.16.0", trl_step_ms=200.0, trl_step_cpu_ms=240.0,
                                        trl_speedup=4.0, trl_speedup_cpu=4.0))
    assert "TRL 1.16.0 GRPOTrainer step" in table and "4.00x" in table


def test_a_small_run_writes_bench_json_and_says_when_trl_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "ROLLOUT_ROWS", 16)
    monkeypatch.setattr(bench, "MATMUL_SHAPES", {"small": (32, 16, 8)})
    monkeypatch.setattr(bench, "WORK", dict(bench.WORK, prompts=4, group_size=2, completion_len=4))
    monkeypatch.setattr(bench, "_trl_side", lambda *a, **k: None)  # as without TRL installed
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--repeats", "1", "--device", "cpu", "--vs-trl"])
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert bench.TRL_MISSING in printed and "GRPO step (4 x 2)" in printed
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["grpo_step_ms"] > 0 and saved["step_gflop"] < saved["step_gflop_unshared"]
    assert 0 < saved["matmul_fraction"] and saved["train_pass_gemms"] > 0
    assert "trl_step_ms" not in saved
