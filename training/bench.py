"""Speed figures: `python -m training bench [--vs-trl] --out DIR` writes DIR/bench.json and prints a table.

    rollout_tokens_per_s_cached    sampled tokens per second, 256 different prompts of `sort`, KV cache
    rollout_tokens_per_s_uncached  the same rollout re-reading the whole prefix at every step
    kv_cache_speedup               cached / uncached (the course asks for at least 3x)
    rollout_tokens_per_s_grouped   32 prompts x 8 samples, each prompt prefilled once for its group
    matmul_gflops                  the machine's measured float32 matmul limit: 2*M*K*N / seconds, best shape
    grpo_step_ms                   one training_step of the course's GRPOTrainer on the identical work below
                                   (grpo_step_cpu_ms: the CPU seconds of this process meanwhile, every thread)
    step_gflop, step_gflop_per_s   its FLOPs, counted from the shapes the model really ran (2 per multiply-add)
    train_pass_*                   the training forward+backward alone (log-probs, entropy, loss, backward):
                                   its matmul GFLOP/s, and the matmul limit AT THE SAME SHAPES (every GEMM of the
                                   pass, recorded with torch.profiler and replayed alone, back to back):
                                   matmul_fraction = pass GFLOP/s / that limit (1.0 = nothing but matmuls)
    trl_step_ms, trl_speedup       --vs-trl: TRL's GRPOTrainer.train() on the same work, one update per step,
                                   timed step by step, alternating with the course's step in the same process
                                   (trl_step_cpu_ms, trl_speedup_cpu: the same in CPU time)

Identical work (WORK): 32 prompts x 8 samples of `sort` (the same problems on both sides), completions of up to
11 tokens (the length of a right answer), temperature 1, exact-match reward, one pass, one minibatch (one optimizer
step), no KL term (so no reference pass), every group kept (no dynamic sampling); the nano model with the same
initial weights on both sides (transformers GPT-2 via training.hf_export: same logits), AdamW with the same
settings, and the same number of torch threads (the CLI's --threads).

Every figure is the median of `repeats` timed runs after a warm-up run. These are benchmarks, not tests: on a
shared machine they vary, so nothing asserts on them. Compare ratios measured in one run.
"""
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loss.advantages import grpo as grpo_advantages

from . import hf_export
from .defaults import defaults_for
from .device import make_generator, pick_device
from .flags import positive_int
from .model import count_parameters, make_model
from .rl_metrics import forward_flops, grpo_step_flops
from .rollout import generate, sequence_logprobs
from .tasks import make_task
from .tokenizer import TOKENIZER

ROLLOUT_ROWS = 256
MATMUL_SHAPES = {"model (256x25 tokens, 48 -> 192)": (256 * 25, 48, 192), "square 1024": (1024, 1024, 1024)}
WORK = dict(task="sort", prompts=32, group_size=8, completion_len=11, temperature=1.0, reward="exact")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
TRL_MISSING = "TRL is not installed: `pip install -r requirements-test.txt` adds it for the side-by-side figure"


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed repetitions per figure (the median is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vs-trl", action="store_true",
                        help="also time TRL's GRPOTrainer on the identical work, alternating with the course's step")
    parser.add_argument("--profile", action="store_true",
                        help="also print where the course's GRPO step spends its time (torch.profiler, top operators)")


def main(args) -> int:
    results = run_bench(args.out, pick_device(args.device), repeats=args.repeats, seed=args.seed,
                        vs_trl=args.vs_trl, profile=args.profile)
    print(format_table(results))
    if results.get("trl_note"):
        print(results["trl_note"])
    if results.get("profile"):
        print(results["profile"])
    print(f"written to {Path(args.out) / 'bench.json'}")
    return 0


# ------------------------------------------------------------------------------------------------ timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, cpu_times=None) -> float:
    """Seconds that fn() takes (the GPU's queue drained before and after). With a list `cpu_times`, also append
    the CPU seconds this process spent meanwhile (all its threads): on a shared, busy machine they move less
    than the wall time does."""
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    _sync(device)
    if cpu_times is not None:
        cpu_times.append(time.process_time() - c0)
    return time.perf_counter() - t0


def median_seconds(fn, device, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs, after one warm-up run."""
    fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def rollout_tokens_per_s(model, prompts, max_new_tokens, use_cache, repeats, seed=0, num_samples=1) -> float:
    """Sampled tokens (rows x steps taken) per second of generate()."""
    device = prompts.device
    tokens = []

    def run():
        g = make_generator(seed, device)
        out = generate(model, prompts, max_new_tokens, generator=g, use_cache=use_cache, num_samples=num_samples)
        tokens.append(out.completions.numel())

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


# ------------------------------------------------------------------------------------------- FLOP counting
class FlopCounter:
    """Counts the FLOPs of every forward of a training.model.GPT from the shapes it really ran: a hook on its
    trunk sees (rows, new positions, positions already cached); a forward with autograd on counts 3x
    (the backward pass costs about twice the forward)."""

    def __init__(self, model):
        self.config, self.flops = model.config, 0.0
        self.handle = model.trunk.register_forward_pre_hook(self._count)

    def _count(self, module, inputs):
        idx, cache = inputs[0], (inputs[1] if len(inputs) > 1 else None)
        context = cache.length if cache is not None else 0
        flops = forward_flops(self.config, idx.shape[0], idx.shape[1], context)
        self.flops += flops * (3 if torch.is_grad_enabled() else 1)

    def remove(self):
        self.handle.remove()


def _gemm_flops(name, shapes) -> float:
    if name in ("aten::addmm", "aten::baddbmm"):  # the first input is the added bias
        shapes = shapes[1:]
    a, b = shapes[0], shapes[1]
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def gemm_shapes(fn) -> list:
    """The (op, input shapes) of every matmul that fn() runs, from torch.profiler (in order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [(e.name, [list(s) for s in e.input_shapes]) for e in prof.events()
            if e.name in GEMM_OPS and len(e.input_shapes) >= 2]


def gemm_replay(shapes, device, repeats: int, alongside=None) -> tuple[float, float]:
    """(FLOPs, median seconds) of running the recorded matmuls alone, back to back, on fresh operands: the
    matmul limit of exactly those shapes on this machine. With `alongside` (a function), it runs between the
    replays and (FLOPs, replay seconds, alongside seconds) comes back: both medians from alternating runs."""
    calls = []
    for name, s in shapes:
        ops = [torch.randn(*shape, device=device) if shape else None for shape in s[:3]]
        if name in ("aten::addmm", "aten::baddbmm"):
            calls.append((torch.addmm if name == "aten::addmm" else torch.baddbmm, ops[:3]))
        else:
            calls.append((torch.mm if name == "aten::mm" else torch.bmm, ops[:2]))

    def run():
        for op, operands in calls:
            op(*operands)

    flops = sum(_gemm_flops(name, s) for name, s in shapes)
    if alongside is None:
        return flops, median_seconds(run, device, repeats)
    run()
    alongside()
    replay, other = [], []
    for _ in range(repeats):
        replay.append(timed(run, device))
        other.append(timed(alongside, device))
    return flops, statistics.median(replay), statistics.median(other)


# ------------------------------------------------------------------------------------------ identical work
def identical_work(device, seed: int):
    """(model, task, hp, batches): the nano model from `seed`, a sort task whose completions stop at 11 tokens,
    the GRPO row of the work described in the module docstring, and a generator of training batches."""
    task = make_task(WORK["task"])
    torch.manual_seed(seed)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size).to(device)
    task.max_new_tokens = WORK["completion_len"]  # the trainer samples up to task.max_new_tokens
    hp = dict(defaults_for("grpo", WORK["task"]), prompts_per_step=WORK["prompts"], group_size=WORK["group_size"],
              num_iterations=1, num_minibatches=1, dynamic_sampling=False, temperature=WORK["temperature"],
              reward=WORK["reward"], kl_beta=0.0, overlong_penalty=0)
    return model, task, hp


def course_trainer(model, task, hp, device, seed):
    from .trainers import build_trainer, frozen_copy

    return build_trainer("grpo", hp, model, frozen_copy(model), task, make_generator(seed, device))


def training_pass(model, task, hp, batch, device, seed):
    """A function running the training forward+backward of one step on `batch` (sequence_logprobs with entropy,
    a clipped-ratio policy-gradient loss over the response tokens, backward), on a fixed rollout."""
    g = hp["group_size"]
    rollout = generate(model, batch.prompts, task.max_new_tokens, temperature=hp["temperature"],
                       generator=make_generator(seed, device), num_samples=g)
    prompts = batch.prompts.repeat_interleave(g, dim=0)
    rewards = task.reward(rollout.completions, batch.answers.repeat_interleave(g, dim=0), kind=hp["reward"])
    grouped = rewards.view(-1, g)
    advantages = grpo_advantages(grouped, eps=1e-4).view(-1, 1)
    model.train()

    def run():
        logprobs, entropy = sequence_logprobs(model, prompts, rollout.completions, hp["temperature"], with_entropy=True)
        ratio = torch.exp(logprobs - rollout.logprobs)
        surrogate = torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)
        loss = -((surrogate * rollout.mask).sum(1) / rollout.mask.sum(1).clamp(min=1)).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    return run


# ------------------------------------------------------------------------------------------------ TRL
def _trl_side(model, task, hp, device, seed, steps, between):
    """TRL 1.16.0's GRPOTrainer on the identical work for `steps` updates; after each TRL step `between()` runs
    (the course's step, timed by the caller). Returns (wall, CPU) seconds of each TRL step, or None without TRL."""
    from .errors import UsageError

    try:
        from .trl_engine import build_dataset, make_trainer, require_trl

        _, transformers, _ = require_trl()
    except (ImportError, UsageError):  # TRL, transformers or datasets missing: the one-line note says so
        return None
    transformers.utils.logging.set_verbosity_error()
    hf = hf_export.course_to_hf(model).train()
    tokenizer = hf_export.make_tokenizer()
    # the course's step draws its batches from the same stream (seed + 1): the same problems
    dataset = build_dataset(task, dict(hp, steps=steps), seed, data_seed=seed + 1)
    with tempfile.TemporaryDirectory(prefix="course-bench-trl-") as folder:
        trainer = make_trainer(
            hf, tokenizer, task, hp["reward"], dataset, output_dir=folder, bf16=False, use_cpu=device.type == "cpu",
            num_generations=hp["group_size"], per_device_train_batch_size=hp["prompts_per_step"] * hp["group_size"],
            steps_per_generation=1, gradient_accumulation_steps=1, num_iterations=1, max_steps=steps,
            beta=0.0, epsilon=hp["clip_epsilon"], loss_type="grpo", scale_rewards="group",
            temperature=hp["temperature"], top_k=0, top_p=1.0, learning_rate=hp["lr"], lr_scheduler_type="constant",
            warmup_steps=0, max_grad_norm=hp["max_grad_norm"], adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
            max_completion_length=task.max_new_tokens, seed=seed, shuffle_dataset=False)
        times = []

        class Alternate(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                _sync(device)
                self.c0, self.t0 = time.process_time(), time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync(device)
                times.append((time.perf_counter() - self.t0, time.process_time() - self.c0))
                between()

        threads = torch.get_num_threads()
        trainer.add_callback(Alternate())
        trainer.train()
        torch.set_num_threads(threads)  # in case anything in the stack changed it
    return times


# ------------------------------------------------------------------------------------------------ the run
def grpo_step_figures(device, repeats: int, seed: int, vs_trl: bool, profile: bool) -> dict:
    model, task, hp = identical_work(device, seed)
    trainer = course_trainer(model, task, hp, device, seed)
    data = make_generator(seed + 1)
    counter = FlopCounter(model)
    course_times, course_cpu, flops = [], [], []

    def course_step():
        batch = task.sample(hp["prompts_per_step"], data).to(device)
        before = counter.flops
        course_times.append(timed(lambda: trainer.training_step(batch), device, course_cpu))
        flops.append(counter.flops - before)

    out = {}
    trl_times = _trl_side(model, task, hp, device, seed, repeats + 1, course_step) if vs_trl else None
    if trl_times is None:
        for _ in range(repeats + 1):
            course_step()
        if vs_trl:
            out["trl_note"] = TRL_MISSING
    counter.remove()
    step = statistics.median(course_times[1:])
    step_flops = statistics.median(flops[1:])
    rows, p, t = hp["prompts_per_step"] * hp["group_size"], task.prompt_len, task.max_new_tokens
    out.update(grpo_step_ms=step * 1e3, grpo_step_cpu_ms=statistics.median(course_cpu[1:]) * 1e3,
               step_gflop=step_flops / 1e9, step_gflop_per_s=step_flops / step / 1e9,
               step_gflop_unshared=grpo_step_flops(model.config, rows, p, t, 1, False) / 1e9)
    if trl_times is not None:
        import trl

        trl_step = statistics.median(t for t, _ in trl_times[1:])
        trl_cpu = statistics.median(c for _, c in trl_times[1:])
        out.update(trl_version=trl.__version__, trl_step_ms=trl_step * 1e3, trl_step_cpu_ms=trl_cpu * 1e3,
                   trl_speedup=trl_step / step, trl_speedup_cpu=trl_cpu / statistics.median(course_cpu[1:]))

    batch = task.sample(hp["prompts_per_step"], make_generator(seed + 3)).to(device)
    run = training_pass(model, task, hp, batch, device, seed)
    run()
    shapes = gemm_shapes(run)
    gemm_flops, gemm_s, pass_s = gemm_replay(shapes, device, max(repeats, 5), alongside=run)  # alternating
    out.update(train_pass_ms=pass_s * 1e3, train_pass_gemm_gflop=gemm_flops / 1e9,
               train_pass_gflop_per_s=gemm_flops / pass_s / 1e9, train_pass_matmul_limit_gflop_per_s=gemm_flops / gemm_s / 1e9,
               matmul_fraction=gemm_s / pass_s, train_pass_gemms=len(shapes))
    if profile:
        out["profile"] = profile_step(trainer, task, hp, device, seed)
    return out


def profile_step(trainer, task, hp, device, seed, steps: int = 3) -> str:
    """The top operators of `steps` course GRPO steps by their own time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    data = make_generator(seed + 4)
    batches = [task.sample(hp["prompts_per_step"], data).to(device) for _ in range(steps)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches:
            trainer.training_step(batch)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50)


def run_bench(out_dir, device, repeats: int = 7, seed: int = 0, vs_trl: bool = False, profile: bool = False) -> dict:
    torch.manual_seed(seed)
    task = make_task("sort")
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size).to(device)
    prompts = task.sample(ROLLOUT_ROWS, make_generator(seed)).prompts.to(device)
    cached = rollout_tokens_per_s(model, prompts, task.max_new_tokens, True, repeats, seed)
    uncached = rollout_tokens_per_s(model, prompts, task.max_new_tokens, False, repeats, seed)
    g = WORK["group_size"]
    grouped = rollout_tokens_per_s(model, prompts[: ROLLOUT_ROWS // g], task.max_new_tokens, True, repeats, seed, g)
    gflops = matmul_gflops(device, repeats)
    results = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "model": f"nano, {count_parameters(model)} parameters",
        "rollout_rows": ROLLOUT_ROWS,
        "rollout_tokens_per_s_cached": cached,
        "rollout_tokens_per_s_uncached": uncached,
        "kv_cache_speedup": cached / uncached,
        "rollout_tokens_per_s_grouped": grouped,
        "matmul_gflops": max(gflops.values()),
        "matmul_gflops_by_shape": gflops,
        "work": dict(WORK),
        "repeats": repeats,
    }
    try:
        results.update(grpo_step_figures(device, repeats, seed, vs_trl, profile))
    except NotImplementedError as err:  # the student's trainer is not finished: the other figures still stand
        results["grpo_step_ms"] = None
        results["grpo_step_note"] = f"the GRPO trainer is not finished ({err})"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps({k: v for k, v in results.items() if k != "profile"}, indent=2)
                                        + "\n")
    return results


def format_table(results: dict) -> str:
    rows = [
        ("device", f"{results['device']} ({results['torch_threads']} threads)"),
        ("rollout, KV cache",
         f"{results['rollout_tokens_per_s_cached']:,.0f} tokens/s ({results['rollout_rows']} rows)"),
        ("rollout, no cache", f"{results['rollout_tokens_per_s_uncached']:,.0f} tokens/s"),
        ("KV cache speed-up", f"{results['kv_cache_speedup']:.1f}x"),
        ("rollout, 32 x 8 groups", f"{results['rollout_tokens_per_s_grouped']:,.0f} tokens/s (prefill shared)"),
        ("matmul limit", f"{results['matmul_gflops']:,.1f} GFLOP/s (float32)"),
    ]
    rows += [(f"  matmul {k}", f"{v:,.1f} GFLOP/s") for k, v in results["matmul_gflops_by_shape"].items()]
    step = results.get("grpo_step_ms")
    work = results["work"]
    label = f"GRPO step ({work['prompts']} x {work['group_size']})"
    if step is None:
        rows.append((label, results.get("grpo_step_note", "not available")))
    else:
        rows.append((label, f"{step:.1f} ms ({results['grpo_step_cpu_ms']:.1f} ms CPU), {results['step_gflop']:.2f} GFLOP "
                            f"({results['step_gflop_unshared']:.2f} without prompt sharing), "
                            f"{results['step_gflop_per_s']:.1f} GFLOP/s"))
        if "trl_step_ms" in results:
            rows.append((f"TRL {results['trl_version']} GRPOTrainer step",
                         f"{results['trl_step_ms']:.1f} ms ({results['trl_step_cpu_ms']:.1f} ms CPU)"))
            rows.append(("course speed-up over TRL", f"{results['trl_speedup']:.2f}x "
                                                     f"({results['trl_speedup_cpu']:.2f}x in CPU time)"))
        rows.append(("training pass (fwd+bwd)", f"{results['train_pass_ms']:.1f} ms, "
                                                f"{results['train_pass_gemm_gflop']:.2f} GFLOP of matmuls, "
                                                f"{results['train_pass_gflop_per_s']:.1f} GFLOP/s"))
        rows.append(("  matmul limit, same shapes", f"{results['train_pass_matmul_limit_gflop_per_s']:.1f} GFLOP/s "
                                                   f"({results['train_pass_gemms']} GEMMs replayed)"))
        rows.append(("  fraction of that limit", f"{results['matmul_fraction']:.0%}"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
