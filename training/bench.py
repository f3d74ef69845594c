"""Speed figures: `python -m training bench --out DIR` writes DIR/bench.json and prints a table.

    rollout_tokens_per_s_cached    sampled tokens per second, 256 sequences of `sort`, KV cache
    rollout_tokens_per_s_uncached  the same rollout re-reading the whole prefix at every step
    kv_cache_speedup               cached / uncached (the course asks for at least 3x)
    matmul_gflops                  the machine's measured float32 matmul limit: 2*M*K*N / seconds, best shape
    grpo_step_s                    one full GRPO step at 32 prompts x 8 samples (training.rl.bench_grpo_step),
                                   null until the trainer exists

Every figure is the median of `repeats` timed runs after a warm-up run. These are benchmarks, not tests: on a
shared machine they vary, so nothing asserts on them.
"""
import json
import os
import statistics
import time
from pathlib import Path

import torch

from .model import count_parameters, make_model
from .rollout import generate
from .tasks import make_task
from .tokenizer import TOKENIZER

ROLLOUT_ROWS = 256
MATMUL_SHAPES = {"model (256x25 tokens, 48 -> 192)": (256 * 25, 48, 192), "square 1024": (1024, 1024, 1024)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs, after one warm-up run."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rollout_tokens_per_s(model, prompts, max_new_tokens, use_cache, repeats, seed=0) -> float:
    """Sampled tokens (rows x steps taken) per second of generate()."""
    device = prompts.device
    tokens = []

    def run():
        g = torch.Generator(device=device).manual_seed(seed)
        tokens.append(generate(model, prompts, max_new_tokens, generator=g, use_cache=use_cache).completions.numel())

    seconds = median_seconds(run, device, repeats)
    return tokens[-1] / seconds


def matmul_gflops(device, repeats: int) -> dict:
    """GFLOP/s of float32 matmuls: a model-shaped one and a large square one (2*M*K*N flops each), with the
    threads in use and (on CPU) with every core."""
    out = {}
    threads = torch.get_num_threads()
    settings = [("", threads)]
    if device.type == "cpu" and (os.cpu_count() or 1) != threads:
        settings.append((f", {os.cpu_count()} threads", os.cpu_count()))
    for suffix, n_threads in settings:
        torch.set_num_threads(n_threads)
        for name, (m, k, n) in MATMUL_SHAPES.items():
            a = torch.randn(m, k, device=device)
            b = torch.randn(k, n, device=device)
            seconds = median_seconds(lambda: a @ b, device, max(repeats, 10))
            out[name + suffix] = 2 * m * k * n / seconds / 1e9
    torch.set_num_threads(threads)
    return out


def run_bench(out_dir, device, repeats: int = 7, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    task = make_task("sort")
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size).to(device)
    prompts = task.sample(ROLLOUT_ROWS, torch.Generator().manual_seed(seed)).prompts.to(device)
    cached = rollout_tokens_per_s(model, prompts, task.max_new_tokens, True, repeats, seed)
    uncached = rollout_tokens_per_s(model, prompts, task.max_new_tokens, False, repeats, seed)
    gflops = matmul_gflops(device, repeats)
    from .cli import load_rl  # lazily: the trainer may not exist yet

    rl = load_rl()
    grpo_step = rl.bench_grpo_step(device) if rl is not None and hasattr(rl, "bench_grpo_step") else None
    results = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "model": f"nano, {count_parameters(model)} parameters",
        "rollout_rows": ROLLOUT_ROWS,
        "rollout_tokens_per_s_cached": cached,
        "rollout_tokens_per_s_uncached": uncached,
        "kv_cache_speedup": cached / uncached,
        "matmul_gflops": max(gflops.values()),
        "matmul_gflops_by_shape": gflops,
        "grpo_step_s": grpo_step,
        "repeats": repeats,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def format_table(results: dict) -> str:
    rows = [
        ("device", f"{results['device']} ({results['torch_threads']} threads)"),
        ("rollout, KV cache",
         f"{results['rollout_tokens_per_s_cached']:,.0f} tokens/s ({results['rollout_rows']} rows)"),
        ("rollout, no cache", f"{results['rollout_tokens_per_s_uncached']:,.0f} tokens/s"),
        ("KV cache speed-up", f"{results['kv_cache_speedup']:.1f}x"),
        ("matmul limit", f"{results['matmul_gflops']:,.1f} GFLOP/s (float32)"),
    ]
    rows += [(f"  matmul {k}", f"{v:,.1f} GFLOP/s") for k, v in results["matmul_gflops_by_shape"].items()]
    step = results["grpo_step_s"]
    rows.append(("GRPO step (32 x 8)", "not built yet (issue 4)" if step is None else f"{step * 1e3:.1f} ms"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
