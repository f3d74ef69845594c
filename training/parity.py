"""The course's losses against TRL 1.16.0's and verl 0.9.1's own code, on the same tensors, as small tables.

    trl_parity()          TRL's GRPOTrainer loss (its compute_loss on the exported course model) vs the course's
                          GRPOLoss (or the loss/ registry where GRPOLoss has no such option), loss and gradients
    verl_parity()         verl's core_algos (advantage estimators, agg_loss, policy losses, kl_penalty) vs the
                          course's, on random inputs
    trl_differences()     where TRL differs from the course or verl, with the numbers
    verl_differences()    where verl differs from the course, with the numbers
    format_rows(rows)     a printable table;  versions()  the installed library versions

Every comparison is a Row: the setting, the library call and the course call it is compared with, both losses,
the relative difference of the losses, |a - b| / max(|b|, 1e-12), and of the gradients (the largest absolute
difference over every parameter, or every log-probability, divided by the largest gradient entry of the library).
The tests (tests/test_parity_trl.py, tests/test_parity_verl.py) assert these numbers; lesson 11 prints them.

The batch for TRL is a rollout of the course model (training.rollout.generate): B prompts x G samples from a
seeded GPT, its completions, mask and sampling log-probs. The old and reference log-probs are the rollout's own
shifted by seeded noise (so that ratios spread over and beyond the clip range, and the KL is not 0), and the
advantages are drawn at random per completion (a fresh model's rewards are mostly equal, which would leave every
advantage 0 and the comparison empty). TRL's GRPOTrainer is built on the exported model (training.hf_export) with a
tiny GRPOConfig, and its own `compute_loss` (`_compute_loss`) runs on an inputs dict shaped as its
`_generate_and_score_completions` returns it. Gradients are compared parameter by parameter after mapping the
transformers names (and Conv1D's transposed weights) back to the course's.
"""
import importlib
import importlib.metadata
import math
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field

import torch

from . import impl as course_impl
from .model import make_model
from .rollout import generate, sequence_logprobs
from .tasks import make_task
from .tokenizer import TOKENIZER

TRL_VERSION = "1.16.0"
VERL_VERSION = "0.9.1"
TOLERANCE = 1e-5  # relative, loss and gradient


@dataclass
class Row:
    setting: str
    library: str
    course: str
    loss_library: float
    loss_course: float
    loss_rel: float
    grad_rel: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.loss_rel <= TOLERANCE and (self.grad_rel is None or self.grad_rel <= TOLERANCE)


def rel_diff(a, b) -> float:
    """max |a - b| / max(max |b|, 1e-12) (tensors or numbers)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def format_rows(rows, columns=("setting", "library", "course", "loss_library", "loss_course", "loss_rel", "grad_rel"),
                max_width: int = 44) -> str:
    """The rows as an aligned text table (numbers: losses to 6 significant digits, differences as 1.2e-08)."""
    def cell(row, name):
        value = getattr(row, name)
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1e}" if name.endswith("_rel") else f"{value:.6g}"
        text = str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "~"

    table = [list(columns)] + [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def versions() -> dict:
    """The installed versions of the libraries the parity checks use (None when missing)."""
    out = {}
    for name in ("torch", "transformers", "trl", "verl", "accelerate", "datasets"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def course_loss_module():
    """The course's grpo_loss module of the chosen implementation (training.impl)."""
    return course_impl.load("grpo_loss")


# ------------------------------------------------------------------------------------------- the batch
@dataclass
class ParityBatch:
    model: torch.nn.Module          # the course GPT whose log-probs carry the gradient
    prompts: torch.Tensor           # [N, P], N = B * G, rows b * G .. b * G + G - 1 continue prompt b
    completions: torch.Tensor       # [N, T]
    mask: torch.Tensor              # [N, T] float
    old_logprobs: torch.Tensor      # [N, T]
    ref_logprobs: torch.Tensor      # [N, T]
    advantages: torch.Tensor        # [B, G]
    B: int
    G: int
    temperature: float
    info: dict = field(default_factory=dict)


def rollout_batch(seed: int = 0, task_name: str = "sort", prompts: int = 4, group_size: int = 4,
                  temperature: float = 1.0, spread: float = 0.2) -> ParityBatch:
    """A rollout of a seeded course GPT; old / reference log-probs = its own plus N(0, spread) noise."""
    task = make_task(task_name)
    torch.manual_seed(seed)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    generator = torch.Generator().manual_seed(seed + 1)
    batch = task.sample(prompts, generator)
    rollout = generate(model, batch.prompts, task.max_new_tokens, temperature=temperature, generator=generator,
                       num_samples=group_size)
    mask = rollout.mask
    noise = lambda: spread * torch.randn(mask.shape, generator=generator)  # noqa: E731
    with torch.no_grad():
        logprobs = sequence_logprobs(model, batch.prompts.repeat_interleave(group_size, 0), rollout.completions,
                                     temperature)
    old = (logprobs + noise()) * mask
    ref = (logprobs + noise()) * mask
    advantages = torch.randn(prompts, group_size, generator=generator)
    return ParityBatch(model, batch.prompts.repeat_interleave(group_size, 0), rollout.completions, mask, old, ref,
                       advantages, prompts, group_size, temperature,
                       info=dict(task=task_name, seed=seed, lengths=mask.sum(1).tolist()))


def _course_grads(model) -> dict:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _grad_rel(course: dict, library: dict) -> float:
    worst, scale = 0.0, 1e-12
    for name, g in library.items():
        worst = max(worst, float((course[name] - g).abs().max()))
        scale = max(scale, float(g.abs().max()))
    return worst / scale


def course_forward(batch: ParityBatch, loss_fn) -> tuple[float, dict]:
    """loss_fn(logprobs [N, T] with grad) -> scalar, on the course model; returns (loss, gradients)."""
    batch.model.zero_grad(set_to_none=True)
    batch.model.train()
    logprobs = sequence_logprobs(batch.model, batch.prompts, batch.completions, batch.temperature)
    loss = loss_fn(logprobs)
    loss.backward()
    return float(loss.detach()), _course_grads(batch.model)


def grpo_loss_fn(batch: ParityBatch, **settings):
    """The course's GRPOLoss (advantages= form) as a function of the [N, T] log-probs."""
    GRPOLoss = course_loss_module().GRPOLoss
    loss = GRPOLoss(**settings)
    shape = (batch.B, batch.G, -1)

    def fn(logprobs):
        return loss(logprobs.view(shape), batch.old_logprobs.view(shape),
                    reference_logprobs=batch.ref_logprobs.view(shape), response_mask=batch.mask.view(shape),
                    advantages=batch.advantages)
    return fn


def registry_loss_fn(batch: ParityBatch, name: str, loss_agg_mode: str, **hyper):
    """loss/policy_losses.py's POLICY_LOSSES[name] as a function of the [N, T] log-probs."""
    from loss.policy_losses import POLICY_LOSSES

    def fn(logprobs):
        return POLICY_LOSSES[name](logprobs, batch.old_logprobs, batch.advantages.reshape(-1, 1), batch.mask,
                                   loss_agg_mode, **hyper)
    return fn


# ------------------------------------------------------------------------------------------------- TRL
def require(name: str):
    """Import a library the parity checks need, or ImportError with the one line that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"{name} is not installed: pip install -r requirements-test.txt "
                          f"(`make test` does it)") from None


class TRLLoss:
    """TRL's GRPOTrainer built on the exported course model, whose own compute_loss runs on a prepared batch."""

    def __init__(self, batch: ParityBatch):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.trl, transformers = require("trl"), require("transformers")
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        from . import hf_export

        self.hf_export, self.batch = hf_export, batch
        self.tokenizer = hf_export.make_tokenizer()
        datasets = require("datasets")
        self.dataset = datasets.Dataset.from_dict({"prompt": ["0="] * 4})
        self.folder = tempfile.mkdtemp(prefix="trl-parity-")
        weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)   # removed with this object
        self.model_dir = os.path.join(self.folder, "model")   # a folder: TRL builds its reference model from it
        hf_export.export_model(batch.model, self.model_dir, force=True)
        self.auto = transformers.AutoModelForCausalLM

    def trainer(self, **config):
        """A GRPOTrainer on a fresh export of batch.model; `config` goes into GRPOConfig."""
        b = self.batch
        settings = dict(output_dir=self.folder, num_generations=b.G, per_device_train_batch_size=b.B * b.G,
                        max_completion_length=b.completions.shape[1], temperature=b.temperature, bf16=False,
                        fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                        disable_tqdm=True, logging_steps=1, dataloader_pin_memory=False)
        settings.update(config)
        args = self.trl.GRPOConfig(**settings)
        model = self.auto.from_pretrained(self.model_dir, local_files_only=True).train()
        trainer = self.trl.GRPOTrainer(model=model, reward_funcs=_zero_reward, args=args, train_dataset=self.dataset,
                                       processing_class=self.tokenizer)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch per step here
        return trainer

    def inputs(self, rows=None, num_items=None, mask=None) -> dict:
        """The dict TRL's _generate_and_score_completions returns, for the batch (or some of its rows)."""
        b = self.batch
        rows = slice(None) if rows is None else rows
        mask = b.mask if mask is None else mask
        out = dict(prompt_ids=b.prompts[rows], prompt_mask=torch.ones_like(b.prompts[rows]),
                   completion_ids=b.completions[rows], completion_mask=mask[rows].long(),
                   advantages=b.advantages.reshape(-1)[rows], old_per_token_logps=b.old_logprobs[rows],
                   ref_per_token_logps=b.ref_logprobs[rows])
        out["num_items_in_batch"] = torch.as_tensor(mask[rows].sum() if num_items is None else num_items)
        return out

    def loss(self, trainer, inputs) -> tuple[float, dict]:
        """TRL's own loss and the gradients it sends into the course model's parameters (course names)."""
        model = trainer.model
        model.zero_grad(set_to_none=True)
        model.train()
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        return float(loss.detach()), self.hf_export.from_hf_state_dict(grads)


def _zero_reward(completions, **_):
    return [0.0] * len(completions)


# (setting, GRPOConfig overrides, course counterpart description, counterpart builder)
def _trl_cases(batch):
    T = batch.completions.shape[1]
    return [
        ("loss_type=grpo", dict(loss_type="grpo"), "GRPOLoss(seq-mean-token-mean)",
         lambda: grpo_loss_fn(batch, kl_beta=0.0, loss_agg_mode="seq-mean-token-mean")),
        ("loss_type=bnpo", dict(loss_type="bnpo"), "GRPOLoss(token-mean)",
         lambda: grpo_loss_fn(batch, kl_beta=0.0, loss_agg_mode="token-mean")),
        ("loss_type=dr_grpo", dict(loss_type="dr_grpo"), f"GRPOLoss(seq-mean-token-sum-norm, max_len={T})",
         lambda: grpo_loss_fn(batch, kl_beta=0.0, loss_agg_mode="seq-mean-token-sum-norm", max_len=T)),
        ("loss_type=dapo", dict(loss_type="dapo"), "GRPOLoss(token-mean)",
         lambda: grpo_loss_fn(batch, kl_beta=0.0, loss_agg_mode="token-mean")),
        ("loss_type=cispo, epsilon_high=5.0", dict(loss_type="cispo", epsilon_high=5.0),
         "policy_losses.cispo(epsilon_high=5, token-mean)",
         lambda: registry_loss_fn(batch, "cispo", "token-mean", epsilon_high=5.0)),
        ("loss_type=sapo", dict(loss_type="sapo"), "policy_losses.sapo(1.0, 1.05, seq-mean-token-mean)",
         lambda: registry_loss_fn(batch, "sapo", "seq-mean-token-mean", tau_pos=1.0, tau_neg=1.05)),
        ("grpo, epsilon_high=0.28", dict(loss_type="grpo", epsilon_high=0.28), "GRPOLoss(clip_epsilon_high=0.28)",
         lambda: grpo_loss_fn(batch, kl_beta=0.0, clip_epsilon_high=0.28)),
        ("grpo, delta=1.25", dict(loss_type="grpo", delta=1.25),
         "policy_losses.vanilla(delta=1.25, no dual clip)",
         lambda: registry_loss_fn(batch, "vanilla", "seq-mean-token-mean", delta=1.25, clip_ratio_c=None)),
        ("grpo, beta=0.04 (k3), use_bias_correction_kl=False",
         dict(loss_type="grpo", beta=0.04, use_bias_correction_kl=False), "GRPOLoss(kl_beta=0.04, k3)",
         lambda: grpo_loss_fn(batch, kl_beta=0.04, kl_estimator="k3")),
        ("grpo, importance_sampling_level=sequence", dict(loss_type="grpo", importance_sampling_level="sequence"),
         "GRPOLoss(importance_sampling_level=sequence)",
         lambda: grpo_loss_fn(batch, kl_beta=0.0, importance_sampling_level="sequence")),
    ]


TRL_SETTINGS = ("loss_type=grpo", "loss_type=bnpo", "loss_type=dr_grpo", "loss_type=dapo",
                "loss_type=cispo, epsilon_high=5.0", "loss_type=sapo", "grpo, epsilon_high=0.28", "grpo, delta=1.25",
                "grpo, beta=0.04 (k3), use_bias_correction_kl=False", "grpo, importance_sampling_level=sequence")


def trl_parity(batch: ParityBatch | None = None) -> list[Row]:
    """One Row per TRL setting: TRL's compute_loss vs the course's counterpart, loss and gradient."""
    batch = batch or rollout_batch()
    trl_loss = TRLLoss(batch)
    rows = []
    for name, config, course_name, build in _trl_cases(batch):
        trainer = trl_loss.trainer(**config)
        loss_lib, grads_lib = trl_loss.loss(trainer, trl_loss.inputs())
        loss_course, grads_course = course_forward(batch, build())
        rows.append(Row(name, "GRPOTrainer.compute_loss", course_name, loss_lib, loss_course,
                        rel_diff(loss_course, loss_lib), _grad_rel(grads_course, grads_lib)))
    return rows


def trl_differences(batch: ParityBatch | None = None) -> list[Row]:
    """Where TRL 1.16.0 computes something else than the course (and verl), on the same rollout, in numbers."""
    batch = batch or rollout_batch()
    trl_loss = TRLLoss(batch)
    T = batch.completions.shape[1]
    rows = []
    # 1. An empty row (as TRL's mask_truncated_completions makes): TRL divides by every row, the course and verl's
    # agg_loss by the non-empty rows (verl's trainer passes global_batch_size = every row, as TRL).
    empty = batch.mask.clone()
    empty[0] = 0
    emptied = ParityBatch(**{**batch.__dict__, "mask": empty})
    for loss_type, agg, extra in (("dr_grpo", "seq-mean-token-sum-norm", dict(max_len=T)),
                                  ("grpo", "seq-mean-token-mean", {})):
        trainer = trl_loss.trainer(loss_type=loss_type)
        loss_lib, _ = trl_loss.loss(trainer, trl_loss.inputs(mask=empty))
        loss_course, _ = course_forward(emptied, grpo_loss_fn(emptied, kl_beta=0.0, loss_agg_mode=agg, **extra))
        n = batch.B * batch.G
        rows.append(Row(f"{loss_type}, row 0 empty", "GRPOTrainer.compute_loss", f"GRPOLoss({agg})", loss_lib,
                        loss_course, rel_diff(loss_course, loss_lib),
                        note=f"TRL divides by all {n} rows, the course and verl's agg_loss by the {n - 1} non-empty "
                             f"ones: "
                             f"ratio {loss_lib / loss_course if loss_course else float('nan'):.4f} = {n - 1}/{n}"))
    # 2. dapo over two minibatches of one generation batch: TRL normalises each by half the tokens of the whole
    # generation batch; the course's token-mean (and TRL's bnpo) by the minibatch's own tokens.
    trainer = trl_loss.trainer(loss_type="dapo", steps_per_generation=2,
                               per_device_train_batch_size=batch.B * batch.G // 2)
    half = batch.B * batch.G // 2
    total_tokens = batch.mask.sum()
    for part, rows_slice in (("first", slice(0, half)), ("second", slice(half, None))):
        loss_lib, _ = trl_loss.loss(trainer, trl_loss.inputs(rows=rows_slice, num_items=total_tokens))
        sub = _subset(batch, rows_slice)
        loss_course, _ = course_forward(sub, grpo_loss_fn(sub, kl_beta=0.0, loss_agg_mode="token-mean"))
        tokens = float(batch.mask[rows_slice].sum())
        rows.append(Row(f"dapo, {part} of 2 minibatches", "GRPOTrainer.compute_loss", "GRPOLoss(token-mean)",
                        loss_lib, loss_course, rel_diff(loss_course, loss_lib),
                        note=f"TRL divides by {float(total_tokens) / 2:g} (half the generation batch's "
                             f"{float(total_tokens):g} tokens), the course by this minibatch's {tokens:g}"))
    # 3. delta (two-sided clip): the course's GRPOLoss has no such option.
    trainer = trl_loss.trainer(loss_type="grpo", delta=1.25)
    loss_lib, grads_lib = trl_loss.loss(trainer, trl_loss.inputs())
    loss_course, grads_course = course_forward(batch, grpo_loss_fn(batch, kl_beta=0.0))
    rows.append(Row("grpo, delta=1.25", "GRPOTrainer.compute_loss", "GRPOLoss (has no delta)", loss_lib, loss_course,
                    rel_diff(loss_course, loss_lib), _grad_rel(grads_course, grads_lib),
                    note="the course's GRPOLoss has no two-sided clip; loss.policy_losses.vanilla(delta=) and verl's "
                         "dual clip (clip_ratio_c=delta) match TRL"))
    # 4. beta with TRL 1.16.0's default use_bias_correction_kl=True: the k3 term is multiplied by the ratio r
    # (DeepSeek-V3.2's unbiased reverse-KL gradient); the course adds beta * k3 as DeepSeekMath's GRPO does.
    trainer = trl_loss.trainer(loss_type="grpo", beta=0.04)
    loss_lib, grads_lib = trl_loss.loss(trainer, trl_loss.inputs())
    loss_course, grads_course = course_forward(batch, grpo_loss_fn(batch, kl_beta=0.04, kl_estimator="k3"))
    rows.append(Row("grpo, beta=0.04, use_bias_correction_kl=True (default)", "GRPOTrainer.compute_loss",
                    "GRPOLoss(kl_beta=0.04, k3)", loss_lib, loss_course, rel_diff(loss_course, loss_lib),
                    _grad_rel(grads_course, grads_lib),
                    note="TRL's default multiplies k3 by r (differentiable): other value and gradient; "
                         "use_bias_correction_kl=False gives the course's"))
    # 5. CISPO: TRL caps the weight above only (epsilon_high is the cap); verl clips it to [1 - low, 1 + high].
    trainer = trl_loss.trainer(loss_type="cispo", epsilon_high=1.2)
    loss_lib, grads_lib = trl_loss.loss(trainer, trl_loss.inputs())
    loss_course, grads_course = course_forward(
        batch, registry_loss_fn(batch, "cispo", "token-mean", clip_ratio_low=0.2, clip_ratio_high=0.2))
    low = float(((batch_ratio(batch) < 0.8) & batch.mask.bool()).float().sum())
    rows.append(Row("cispo, cap 1.2 vs clip [0.8, 1.2]", "GRPOTrainer.compute_loss (epsilon_high=1.2)",
                    "policy_losses.cispo (verl's two-sided clip)", loss_lib, loss_course,
                    rel_diff(loss_course, loss_lib), _grad_rel(grads_course, grads_lib),
                    note=f"{low:g} tokens have r < 0.8: verl lifts their weight to 0.8, TRL keeps r"))
    return rows


def batch_ratio(batch: ParityBatch) -> torch.Tensor:
    """The importance ratios r = pi_theta / pi_old of the batch's tokens [N, T] (no gradient)."""
    with torch.no_grad():
        logprobs = sequence_logprobs(batch.model, batch.prompts, batch.completions, batch.temperature)
    return torch.exp(logprobs - batch.old_logprobs)


def _subset(batch: ParityBatch, rows: slice) -> ParityBatch:
    n = batch.B * batch.G
    idx = range(n)[rows]
    groups = len(idx) // batch.G
    return ParityBatch(batch.model, batch.prompts[rows], batch.completions[rows], batch.mask[rows],
                       batch.old_logprobs[rows], batch.ref_logprobs[rows],
                       batch.advantages.reshape(-1)[rows].reshape(groups, batch.G), groups, batch.G, batch.temperature)


# ------------------------------------------------------------------------------------------------ verl
def random_inputs(seed: int = 0, n_groups: int = 4, group_size: int = 4, T: int = 7, spread: float = 0.3):
    """Random log-probs, old / reference log-probs, a mask with rows of lengths 1..T, rewards and advantages."""
    g = torch.Generator().manual_seed(seed)
    n = n_groups * group_size
    logprobs = -torch.rand(n, T, generator=g, dtype=torch.float64) * 3
    old = logprobs + spread * torch.randn(n, T, generator=g, dtype=torch.float64)
    ref = logprobs + spread * torch.randn(n, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    lengths[0] = T                                            # at least one full row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    rewards = torch.randint(0, 3, (n_groups, group_size), generator=g).double() / 2
    advantages = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return dict(logprobs=logprobs, old=old, ref=ref, mask=mask, rewards=rewards, advantages=advantages,
                n_groups=n_groups, group_size=group_size, generator=g)


def _verl():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    core = require("verl.trainer.ppo.core_algos")
    from verl.trainer.config import AlgoConfig
    from verl.workers.config import ActorConfig
    return core, AlgoConfig, ActorConfig


def actor_config(ActorConfig, **clip):
    """A minimal verl ActorConfig (the policy losses read the clip ratios and clip_ratio_c from it)."""
    return ActorConfig(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=4, rollout_n=1, **clip)


def _grad_of(fn, logprobs):
    x = logprobs.clone().requires_grad_(True)
    loss = fn(x)
    loss.backward()
    return float(loss.detach()), x.grad


def verl_parity(seed: int = 0) -> list[Row]:
    """verl 0.9.1's core_algos vs the course's building blocks on random inputs (float64)."""
    core, AlgoConfig, ActorConfig = _verl()
    from loss.advantages import estimate_advantages, outcome_token_rewards
    import numpy as np

    course = course_loss_module()
    x = random_inputs(seed)
    B, G = x["n_groups"], x["group_size"]
    mask = x["mask"]
    mask3 = mask.view(B, G, -1)
    token_rewards = outcome_token_rewards(x["rewards"], mask3).view(B * G, -1)
    index = np.repeat(np.arange(B), G)
    rows = []

    def add(setting, library, course_name, lib, ours, grad_lib=None, grad_ours=None, note=""):
        rows.append(Row(setting, library, course_name, float(torch.as_tensor(lib).double().abs().sum()),
                        float(torch.as_tensor(ours).double().abs().sum()), rel_diff(ours, lib),
                        None if grad_lib is None else rel_diff(grad_ours, grad_lib), note))

    # advantage estimators (values compared per token; the "loss" columns hold sum |A|)
    expand = lambda a: a.reshape(B * G, -1) * mask  # noqa: E731
    for normalize in (True, False):
        lib, _ = core.compute_grpo_outcome_advantage(token_rewards, mask, index, epsilon=1e-6,
                                                     norm_adv_by_std_in_grpo=normalize)
        ours = expand(estimate_advantages("grpo", x["rewards"], mask3, normalize_std=normalize, eps=1e-6))
        add(f"adv grpo, norm_adv_by_std_in_grpo={normalize}", "compute_grpo_outcome_advantage",
            "estimate_advantages('grpo')", lib, ours, note="loss columns: sum |A|")
    lib, _ = core.compute_rloo_outcome_advantage(token_rewards, mask, index, epsilon=1e-6)
    add("adv rloo", "compute_rloo_outcome_advantage", "estimate_advantages('rloo')", lib,
        expand(estimate_advantages("rloo", x["rewards"], mask3)))
    passk_rewards = x["rewards"] + 0.01 * torch.arange(G, dtype=torch.float64)  # no ties: the best is unique
    passk_tokens = outcome_token_rewards(passk_rewards, mask3).view(B * G, -1)
    lib, _ = core.compute_grpo_passk_outcome_advantage(passk_tokens, mask, index, epsilon=1e-6,
                                                       norm_adv_by_std_in_grpo=True,
                                                       config=AlgoConfig(norm_adv_by_std_in_grpo=True))
    add("adv grpo_passk", "compute_grpo_passk_outcome_advantage", "estimate_advantages('grpo_passk')", lib,
        expand(estimate_advantages("grpo_passk", passk_rewards, mask3, normalize_std=True, eps=1e-6)))
    lib, _ = core.compute_reinforce_plus_plus_outcome_advantage(token_rewards, mask, config=AlgoConfig(gamma=1.0))
    add("adv reinforce_plus_plus", "compute_reinforce_plus_plus_outcome_advantage",
        "estimate_advantages('reinforce_plus_plus')", lib,
        estimate_advantages("reinforce_plus_plus", x["rewards"], mask3, gamma=1.0).reshape(B * G, -1))
    baseline = torch.rand(B, generator=x["generator"], dtype=torch.float64)
    lib, _ = core.compute_remax_outcome_advantage(token_rewards, baseline.repeat_interleave(G), mask)
    add("adv remax", "compute_remax_outcome_advantage", "estimate_advantages('remax')", lib,
        expand(estimate_advantages("remax", x["rewards"], mask3, baseline_rewards=baseline)))

    # agg_loss, every mode
    loss_mat = torch.randn(mask.shape, generator=x["generator"], dtype=torch.float64)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        lib = core.agg_loss(loss_mat, mask, mode)
        ours = course.aggregate_loss(loss_mat, mask, mode)
        rows.append(Row(f"agg_loss {mode}", "agg_loss", "aggregate_loss", float(lib), float(ours),
                        rel_diff(ours, lib),
                        note="verl adds 1e-8 to row lengths" if mode == "seq-mean-token-mean" else ""))

    # policy losses, with their gradients w.r.t. the log-probs
    old, adv = x["old"], x["advantages"]
    shape = (B, G, -1)
    for mode in ("token-mean", "seq-mean-token-mean"):
        config = actor_config(ActorConfig, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
        lib_fn = lambda lp: core.compute_policy_loss_vanilla(old, lp, adv, mask, mode, config)[0]  # noqa: E731
        our_fn = lambda lp: course.GRPOLoss(0.2, 0.0, clip_epsilon_high=0.28, loss_agg_mode=mode)(  # noqa: E731
            lp.view(shape), old.view(shape), response_mask=mask.view(shape), advantages=adv.view(B, G))
        ratio_max = float(torch.exp(x["logprobs"] - old)[mask.bool()].max())
        (l1, g1), (l2, g2) = _grad_of(lib_fn, x["logprobs"]), _grad_of(our_fn, x["logprobs"])
        rows.append(Row(f"vanilla, clip 0.2/0.28, clip_ratio_c=3, {mode}", "compute_policy_loss_vanilla",
                        "GRPOLoss(advantages=)", l1, l2, rel_diff(l2, l1), rel_diff(g2, g1),
                        note=f"largest ratio {ratio_max:.2f} < 3: the dual clip does not act"))
    # TRL's delta (two-sided clip) is verl's dual clip at clip_ratio_c = delta (delta > 1 + clip_ratio_high): TRL's
    # loss equals policy_losses.vanilla(delta=) (trl_parity), which equals verl's here.
    from loss.policy_losses import vanilla
    wide = random_inputs(seed, spread=0.6)
    w_old, w_adv = wide["old"], wide["advantages"]
    config = actor_config(ActorConfig, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=1.5)
    w_mask = wide["mask"]
    lib_fn = lambda lp: core.compute_policy_loss_vanilla(w_old, lp, w_adv, w_mask, "token-mean", config)[0]  # noqa
    our_fn = lambda lp: vanilla(lp, w_old, w_adv, w_mask, "token-mean", delta=1.5, clip_ratio_c=None)  # noqa: E731
    acting = int(((torch.exp(wide["logprobs"] - w_old) > 1.5) & (w_adv < 0) & wide["mask"].bool()).sum())
    (l1, g1), (l2, g2) = _grad_of(lib_fn, wide["logprobs"]), _grad_of(our_fn, wide["logprobs"])
    rows.append(Row("vanilla, clip_ratio_c=1.5 (dual clip)", "compute_policy_loss_vanilla",
                    "policy_losses.vanilla(delta=1.5) = TRL's delta", l1, l2, rel_diff(l2, l1), rel_diff(g2, g1),
                    note=f"{acting} tokens with A < 0 and r > 1.5: both cap them"))
    config = actor_config(ActorConfig, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2)
    lib_fn = lambda lp: core.compute_policy_loss_gspo(old, lp, adv, mask, "seq-mean-token-mean", config)[0]  # noqa
    our_fn = lambda lp: course.GRPOLoss(0.2, 0.0, importance_sampling_level="sequence")(  # noqa: E731
        lp.view(shape), old.view(shape), response_mask=mask.view(shape), advantages=adv.view(B, G))
    (l1, g1), (l2, g2) = _grad_of(lib_fn, x["logprobs"]), _grad_of(our_fn, x["logprobs"])
    rows.append(Row("gspo, clip 0.2, seq-mean-token-mean", "compute_policy_loss_gspo",
                    "GRPOLoss(importance_sampling_level=sequence)", l1, l2, rel_diff(l2, l1), rel_diff(g2, g1)))

    # KL estimators
    names = (("kl", "k1"), ("k1", "k1"), ("mse", "k2"), ("k2", "k2"), ("low_var_kl", "k3"), ("k3", "k3"))
    for verl_name, ours in names:
        lib = core.kl_penalty(x["logprobs"], x["ref"], verl_name)
        mine = course.kl_estimate(x["logprobs"], x["ref"], ours)
        add(f"kl_penalty {verl_name}", "kl_penalty", f"kl_estimate({ours})", lib, mine, note="loss columns: sum |KL|")
    return rows


def verl_differences(seed: int = 0) -> list[Row]:
    """Where verl 0.9.1 differs from the course, in numbers: the dual clip, the k3 clamp, an all-empty mask."""
    core, AlgoConfig, ActorConfig = _verl()
    course = course_loss_module()
    x = random_inputs(seed, spread=1.5)    # wide spread: some ratios beyond clip_ratio_c = 3
    B, G = x["n_groups"], x["group_size"]
    mask, old, adv = x["mask"], x["old"], x["advantages"]
    shape = (B, G, -1)
    rows = []
    ratio = torch.exp(x["logprobs"] - old)
    beyond = int(((ratio > 3) & (adv < 0) & mask.bool()).sum())
    config = actor_config(ActorConfig, clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0)
    lib_fn = lambda lp: core.compute_policy_loss_vanilla(old, lp, adv, mask, "token-mean", config)[0]  # noqa: E731
    our_fn = lambda lp: course.GRPOLoss(0.2, 0.0, loss_agg_mode="token-mean")(  # noqa: E731
        lp.view(shape), old.view(shape), response_mask=mask.view(shape), advantages=adv.view(B, G))
    (l1, g1), (l2, g2) = _grad_of(lib_fn, x["logprobs"]), _grad_of(our_fn, x["logprobs"])
    rows.append(Row("vanilla, clip_ratio_c=3 (dual clip)", "compute_policy_loss_vanilla", "GRPOLoss (no dual clip)",
                    l1, l2, rel_diff(l2, l1), rel_diff(g2, g1),
                    note=f"{beyond} tokens with A < 0 and r > 3: verl caps their loss at -3A and drops their gradient"))
    from loss.policy_losses import vanilla
    reg_fn = lambda lp: vanilla(lp, old, adv, mask, "token-mean", clip_ratio_c=3.0)  # noqa: E731
    l3, g3 = _grad_of(reg_fn, x["logprobs"])
    rows.append(Row("vanilla, clip_ratio_c=3 (dual clip)", "compute_policy_loss_vanilla",
                    "policy_losses.vanilla(clip_ratio_c=3)", l1, l3, rel_diff(l3, l1), rel_diff(g3, g1),
                    note="the loss/ registry has the dual clip"))
    # k3 clamp: verl clamps the log-ratio to [-20, 20] and k3 to [-10, 10]
    logp = torch.tensor([[-14.0, -1.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-0.1, -1.2, -0.5]], dtype=torch.float64)
    lib = core.kl_penalty(logp, ref, "low_var_kl")
    mine = course.kl_estimate(logp, ref, "k3")
    rows.append(Row("kl_penalty low_var_kl, ref - logp = 13.9", "kl_penalty", "kl_estimate(k3)", float(lib[0, 0]),
                    float(mine[0, 0]), rel_diff(mine[0, 0], lib[0, 0]),
                    note="verl clamps k3 to 10; the course returns exp(13.9) - 13.9 - 1"))
    # an all-empty mask: verl divides 0 by 0
    empty = torch.zeros_like(mask)
    loss_mat = torch.randn(mask.shape, generator=x["generator"], dtype=torch.float64)
    lib = core.agg_loss(loss_mat, empty, "token-mean")
    ours = course.aggregate_loss(loss_mat, empty, "token-mean")
    rows.append(Row("agg_loss token-mean, all-zero mask", "agg_loss", "aggregate_loss", float(lib), float(ours),
                    float("nan") if math.isnan(float(lib)) else rel_diff(ours, lib),
                    note="verl gives NaN (0/0), the course 0"))
    return rows


def report() -> str:
    """Every table, as `python -m training.parity` prints it (the versions first)."""
    parts = ["installed: " + ", ".join(f"{k} {v}" for k, v in versions().items())]
    notes = ("setting", "course", "loss_library", "loss_course", "loss_rel", "grad_rel", "note")
    batch = rollout_batch()
    parts += [f"TRL {TRL_VERSION} GRPOTrainer.compute_loss vs the course, on a rollout of the course model "
              f"({batch.B} prompts x {batch.G} samples, {int(batch.mask.sum())} tokens):",
              format_rows(trl_parity(batch)),
              "Where TRL differs:", format_rows(trl_differences(batch), notes, max_width=110),
              f"verl {VERL_VERSION} core_algos vs the course, random inputs (float64):", format_rows(verl_parity()),
              "Where verl differs:", format_rows(verl_differences(), notes, max_width=110)]
    return "\n\n".join(parts)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(report())
