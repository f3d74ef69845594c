"""Train with TRL's own GRPOTrainer on the course task: `trl --task sort --init CKPT --out DIR`.

The course model is exported to a transformers GPT-2 (training/hf_export.py), TRL 1.16.0's GRPOTrainer trains it
with the course's rule reward (task.reward, wrapped as a TRL reward function) on the course's training problems,
and at the end the weights come back into the course GPT, whose greedy evaluator (training.evaluate) measures
held-out exact match before and after, as for `python -m training grpo`. Everything runs offline.

The course's flags (training/flags.py, the same as `grpo`) map onto GRPOConfig names, printed at the start:

    course                                  TRL GRPOConfig
    --group-size G                          num_generations = G
    --prompts-per-step B, --num-minibatches per_device_train_batch_size = B*G / (M * processes),
        M, one step = one rollout             steps_per_generation = M, gradient_accumulation_steps = 1
    --num-iterations mu                     num_iterations = mu      (TRL's max_steps = steps * mu * M updates)
    --kl-beta, --clip-epsilon(-high)        beta, epsilon, epsilon_high
    --normalize-std / --no-normalize-std    scale_rewards = "group" / "none"
    --loss-agg-mode                         loss_type: seq-mean-token-mean -> grpo, token-mean -> bnpo,
                                            seq-mean-token-sum-norm -> dr_grpo (or --loss-type directly)
    --temperature, --lr, --warmup,          temperature, learning_rate, warmup_steps (in updates),
    --schedule, --max-grad-norm             lr_scheduler_type (cosine to 10%: cosine_with_min_lr), max_grad_norm

TRL has no DAPO dynamic sampling, overlong penalty or other advantage estimators in GRPOTrainer: asking for them
is an error; the sort row's default dynamic sampling is dropped and the table says so.

Under `accelerate launch` the same command runs on every process (TRL shards the generation batch); only the
main process writes files. `--model PATH` trains any local causal-LM folder with its tokenizer instead.
"""
import os
import statistics
import time
from pathlib import Path

import torch

from . import hf_export
from .checkpoint import save_checkpoint
from .defaults import PLOTS
from .device import make_generator, pick_device, seed_everything
from .errors import UsageError
from .evaluate import greedy_accuracy
from .flags import add_rl_arguments, positive_int, rl_hparams, task_of
from .model import GPT
from .run import preset_of
from .runlog import RunLog, plot_curves, write_summary
from .tasks import OPS, TASKS, make_task
from .tokenizer import EOS_ID, PAD_ID, TOKENIZER

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")
# The course's loss_agg_mode -> the TRL loss_type that aggregates the same way (one process, no accumulation).
LOSS_TYPE_OF_AGG = {"seq-mean-token-mean": "grpo", "token-mean": "bnpo", "seq-mean-token-sum-norm": "dr_grpo"}
AGG_OF_LOSS_TYPE = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
                    "dr_grpo": "seq-mean-token-sum-norm"}
TRL_ADVANTAGES = ("grpo", "dr_grpo")  # what GRPOTrainer computes (group mean, with or without the group std)
INSTALL_HINT = "pip install -r requirements-test.txt (`make test` does it)"


def require_trl():
    """(trl, transformers, datasets), or one UsageError that says how to install them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing is fetched at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import datasets
        import transformers
        import trl
    except ImportError as err:
        raise UsageError(f"the trl command needs {err.name}, which is not installed: {INSTALL_HINT}") from None
    return trl, transformers, datasets


# ------------------------------------------------------------------------------------------------ flags
def add_arguments(parser) -> None:
    parser.add_argument("--task", choices=TASKS[:2], default=None,
                        help="sort | add (default: the checkpoint's task, or the exported model's)")
    parser.add_argument("--op", choices=tuple(OPS), default=None, help="arithmetic operation for --task add")
    parser.add_argument("--init", type=Path, default=None, metavar="CKPT",
                        help="a course checkpoint to start from (e.g. the weak SFT model.pt)")
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="instead of --init: any local transformers causal-LM folder with its tokenizer")
    parser.add_argument("--out", type=Path, default=Path("runs/trl"), help="output folder (default runs/trl)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="RL steps, each one rollout of prompts-per-step x group-size (default: the course's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: what accelerate picks (a GPU when there is one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision (a real model on GPUs)")
    trl_group = parser.add_argument_group("TRL only")
    trl_group.add_argument("--loss-type", choices=LOSS_TYPES, default=None,
                           help="GRPOConfig.loss_type (default: the one matching --loss-agg-mode, i.e. grpo)")
    trl_group.add_argument("--delta", type=float, default=None,
                           help="GRPOConfig.delta: two-sided clip, caps the ratio at delta (INTELLECT-2)")
    trl_group.add_argument("--importance-sampling-level", choices=("token", "sequence"), default="token",
                           help="GRPOConfig.importance_sampling_level (sequence: GSPO)")
    trl_group.add_argument("--scale-rewards", choices=("group", "batch", "none"), default=None,
                           help="GRPOConfig.scale_rewards (default: group, or none with --no-normalize-std)")
    add_rl_arguments(parser, "grpo")



# ----------------------------------------------------------------------------------------- the mapping
def trl_settings(hp: dict, task, args, world_size: int = 1) -> tuple[dict, list]:
    """The course hyperparameters `hp` (training.flags.rl_hparams) -> (GRPOConfig kwargs, table rows).

    Each table row is (course setting, TRL setting). UsageError for a setting TRL's GRPOTrainer cannot do.
    """
    explicit = lambda key: getattr(args, key, None) is not None  # noqa: E731  (set on the command line)
    if hp["advantage_estimator"] not in TRL_ADVANTAGES:
        raise UsageError(f"--advantage-estimator {hp['advantage_estimator']}: TRL's GRPOTrainer only computes group "
                         f"advantages ({', '.join(TRL_ADVANTAGES)}); RLOO is TRL's RLOOTrainer, the others are verl's")
    if hp["overlong_penalty"]:
        raise UsageError("--overlong-penalty: TRL's GRPOTrainer has no soft overlong penalty (write it as a reward "
                         "function, or use verl's reward.overlong_buffer)")
    if explicit("dynamic_sampling") and hp["dynamic_sampling"]:
        raise UsageError("--dynamic-sampling: TRL's GRPOTrainer has no DAPO dynamic sampling (verl has "
                         "algorithm.filter_groups)")
    for key, what in (("policy_loss", "use --loss-type (TRL's own menu)"),
                      ("sampler_mismatch", "TRL samples with the policy itself, or with vLLM"),
                      ("rollout_correction", "TRL corrects only a vLLM sampler (vllm_importance_sampling_*)")):
        if hp.get(key) is not None:
            raise UsageError(f"--{key.replace('_', '-')}: not available in the trl command: {what}")
    loss_type = args.loss_type
    agg = hp["loss_agg_mode"]
    if loss_type is None:
        if agg not in LOSS_TYPE_OF_AGG:
            raise UsageError(f"--loss-agg-mode {agg} has no TRL loss_type (TRL has {', '.join(LOSS_TYPES)})")
        loss_type = LOSS_TYPE_OF_AGG[agg]
    elif explicit("loss_agg_mode") and AGG_OF_LOSS_TYPE.get(loss_type) != agg:
        raise UsageError(f"--loss-type {loss_type} aggregates as {AGG_OF_LOSS_TYPE.get(loss_type, 'its own way')}, "
                         f"not --loss-agg-mode {agg}: give one of the two")
    normalize = hp["normalize_std"] and hp["advantage_estimator"] == "grpo"
    scale_rewards = args.scale_rewards or ("group" if normalize else "none")
    if args.scale_rewards is not None and explicit("normalize_std") and (args.scale_rewards != "none") != normalize:
        flag = "--normalize-std" if normalize else "--no-normalize-std"
        raise UsageError(f"--scale-rewards {args.scale_rewards} contradicts {flag}")
    group, prompts, minibatches = hp["group_size"], hp["prompts_per_step"], hp["num_minibatches"]
    rows_per_step = prompts * group
    if rows_per_step % (minibatches * world_size):
        raise UsageError(f"prompts-per-step x group-size = {rows_per_step} completions must split evenly into "
                         f"--num-minibatches {minibatches} x {world_size} process(es)")
    per_device = rows_per_step // (minibatches * world_size)
    updates = hp["num_iterations"] * minibatches
    epsilon_high = hp["clip_epsilon_high"]
    if loss_type == "cispo" and epsilon_high is None:
        epsilon_high = 5.0   # CISPO's epsilon_high is the ratio cap itself (ScaleRL's recommendation)
    config = dict(
        num_generations=group, per_device_train_batch_size=per_device, steps_per_generation=minibatches,
        gradient_accumulation_steps=1, num_iterations=hp["num_iterations"], max_steps=hp["steps"] * updates,
        beta=hp["kl_beta"], use_bias_correction_kl=False, epsilon=hp["clip_epsilon"], epsilon_high=epsilon_high,
        delta=args.delta,
        loss_type=loss_type, scale_rewards=scale_rewards, importance_sampling_level=args.importance_sampling_level,
        temperature=hp["temperature"], top_k=0, top_p=1.0, learning_rate=hp["lr"],
        warmup_steps=hp["warmup"] * updates,
        lr_scheduler_type="cosine_with_min_lr" if hp["schedule"] == "cosine" else "constant_with_warmup",
        lr_scheduler_kwargs={"min_lr_rate": 0.1} if hp["schedule"] == "cosine" else {},
        max_grad_norm=hp["max_grad_norm"] or 0.0, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0,
        max_completion_length=task.max_new_tokens, seed=args.seed, shuffle_dataset=False,
        top_entropy_quantile=hp.get("top_entropy_quantile") or 1.0,
        mask_truncated_completions=bool(hp.get("mask_truncated")))
    scaled = " (per process)" if world_size > 1 else ""
    rows = [
        (f"--group-size {group}", f"num_generations={group}"),
        (f"--prompts-per-step {prompts}, --num-minibatches {minibatches}",
         f"per_device_train_batch_size={per_device}{scaled}, steps_per_generation={minibatches}"),
        (f"--num-iterations {hp['num_iterations']}", f"num_iterations={hp['num_iterations']}"),
        (f"--steps {hp['steps']} (rollouts)",
         f"max_steps={config['max_steps']} (optimizer updates, {updates} per rollout)"),
        (f"--kl-beta {hp['kl_beta']} (k3)", f"beta={hp['kl_beta']}, use_bias_correction_kl=False (TRL's default "
                                               f"True multiplies k3 by the ratio)"),
        (f"--clip-epsilon {hp['clip_epsilon']}", f"epsilon={hp['clip_epsilon']}"),
        (f"--clip-epsilon-high {hp['clip_epsilon_high']}", f"epsilon_high={epsilon_high}"),
        (f"--normalize-std {hp['normalize_std']} (--advantage-estimator {hp['advantage_estimator']})",
         f"scale_rewards={scale_rewards!r}"),
        (f"--loss-agg-mode {agg}", f"loss_type={loss_type!r}"),
        ("(TRL only)", f"delta={args.delta}, importance_sampling_level={args.importance_sampling_level!r}"),
        (f"--temperature {hp['temperature']}", f"temperature={hp['temperature']}, top_k=0, top_p=1.0"),
        (f"--lr {hp['lr']}, AdamW betas (0.9, 0.99)", f"learning_rate={hp['lr']}, adam_beta2=0.99"),
        (f"--warmup {hp['warmup']}, --schedule {hp['schedule']}",
         f"warmup_steps={config['warmup_steps']}, lr_scheduler_type={config['lr_scheduler_type']!r}"),
        (f"--max-grad-norm {hp['max_grad_norm']}", f"max_grad_norm={config['max_grad_norm']}"),
        (f"task.max_new_tokens {task.max_new_tokens}", f"max_completion_length={task.max_new_tokens}"),
        (f"--reward {hp['reward']}", f"reward_funcs=[course {hp['reward']} reward]"),
        (f"--seed {args.seed}", f"seed={args.seed}, shuffle_dataset=False (the course's problems, in order)"),
        (f"--top-entropy-quantile {hp.get('top_entropy_quantile')}",
         f"top_entropy_quantile={config['top_entropy_quantile']}"),
        (f"--mask-truncated {bool(hp.get('mask_truncated'))}",
         f"mask_truncated_completions={config['mask_truncated_completions']}"),
    ]
    if hp["dynamic_sampling"]:
        rows.append(("dynamic_sampling True (course default)", "(none in TRL: zero-std groups get advantage 0)"))
    return config, rows


def format_table(rows, headers=("course", "TRL 1.16.0 GRPOConfig")) -> str:
    """Two aligned columns, as printed at the start of a run."""
    width = max(len(headers[0]), *(len(a) for a, _ in rows))
    lines = [f"{headers[0]:<{width}}  {headers[1]}", f"{'-' * width}  {'-' * len(headers[1])}"]
    lines += [f"{a:<{width}}  {b}" for a, b in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the data
QUIET_RUN = dict(report_to="none", save_strategy="no", logging_steps=1, fp16=False, gradient_checkpointing=False,
                 disable_tqdm=True, dataloader_num_workers=0, log_completions=False, disable_dropout=True,
                 dataloader_pin_memory=False)


def build_dataset(task, hp, seed: int, data_seed: int | None = None):
    """The course's training problems as a datasets.Dataset (columns prompt, answer_ids), in the course's order.

    The same generator (seed + 13, or data_seed) and the same per-step draws as training/run.py, so TRL and the
    course trainer see the same problems in the same order.
    """
    _, _, datasets = require_trl()
    data = make_generator(seed + 13 if data_seed is None else data_seed)
    prompts, answers = [], []
    for _ in range(hp["steps"]):
        batch = task.sample(hp["prompts_per_step"], data)
        prompts += [TOKENIZER.decode(p) for p in batch.prompts]
        answers += batch.answers.tolist()
    return datasets.Dataset.from_dict({"prompt": prompts, "answer_ids": answers})


def make_trainer(hf, tokenizer, task, reward_kind: str, dataset, **config):
    """TRL's GRPOTrainer on `dataset` with the course's reward, `config` (GRPOConfig fields) over the settings of a
    quiet run (no saving, reports, completions log, dropout or progress callbacks)."""
    trl, transformers, _ = require_trl()
    args = trl.GRPOConfig(**dict(QUIET_RUN, **config))
    trainer = trl.GRPOTrainer(model=hf, reward_funcs=make_reward(task, reward_kind, tokenizer), args=args,
                              train_dataset=dataset, processing_class=tokenizer)
    for callback in (transformers.PrinterCallback, transformers.trainer_callback.ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def text_to_course_ids(text: str, ended: bool) -> list[int]:
    """A completion's text -> course ids: each character in the vocabulary, PAD for any other (never right),
    then EOS when the model stopped (ended)."""
    ids = [TOKENIZER.char_to_id.get(ch, PAD_ID) for ch in text]
    return ids + [EOS_ID] if ended else ids


def completions_tensor(rows: list[list[int]]) -> torch.Tensor:
    """Ragged id lists -> [N, T] long, PAD-filled (the layout task.reward expects)."""
    width = max(1, max((len(r) for r in rows), default=1))
    out = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row[:width])
    return out


def make_reward(task, kind: str, tokenizer=None):
    """A TRL reward function: the course's rule reward `kind` on each completion.

    With the course tokenizer (tokenizer None or hf_export's), the completion ids are the course's ids as they are;
    with another tokenizer, the decoded text is mapped character by character (text_to_course_ids).
    """

    course_ids = tokenizer is None or hf_export.course_vocabulary_of(tokenizer)
    eos_ids = {tokenizer.eos_token_id} if tokenizer is not None else {EOS_ID}

    def reward(prompts, completions, completion_ids, answer_ids, **_):
        if course_ids:
            rows = [list(ids) for ids in completion_ids]
        else:
            rows = [text_to_course_ids(text, bool(ids) and ids[-1] in eos_ids)
                    for text, ids in zip(completions, completion_ids)]
        answers = torch.tensor(answer_ids, dtype=torch.long)
        return task.reward(completions_tensor(rows), answers, kind=kind).tolist()

    reward.__name__ = f"course_{task.name}_{kind}"
    return reward


# ----------------------------------------------------------------------------------------- evaluation
def hf_greedy_accuracy(hf_model, tokenizer, task, chunk_size: int = 250) -> float:
    """Held-out greedy exact match of any transformers causal LM (text mapped to course ids): the evaluator
    for a --model that is not a course GPT."""
    batch = task.eval_batch()
    device = next(hf_model.parameters()).device
    right = 0.0
    was_training = hf_model.training
    hf_model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(batch), chunk_size):
            prompts = [TOKENIZER.decode(p) for p in batch.prompts[start : start + chunk_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = hf_model.generate(**enc, do_sample=False, max_new_tokens=task.max_new_tokens,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            rows = []
            for ids in out[:, enc["input_ids"].shape[1]:].tolist():
                ended = tokenizer.eos_token_id in ids
                ids = ids[: ids.index(tokenizer.eos_token_id)] if ended else ids
                rows.append(text_to_course_ids(tokenizer.decode(ids, skip_special_tokens=True), ended))
            answers = batch.answers[start : start + chunk_size]
            right += float(task.reward(completions_tensor(rows), answers, kind="exact").sum())
    finally:
        tokenizer.padding_side = side
        hf_model.train(was_training)
    return right / len(batch)


class Evaluator:
    """Held-out greedy exact match of the HF model being trained: through the course GPT (weights copied back,
    training.evaluate.greedy_accuracy) when it is one, else hf_greedy_accuracy."""

    def __init__(self, hf_model, tokenizer, task):

        self.task, self.tokenizer = task, tokenizer
        self.course = None
        try:
            if hf_export.course_vocabulary_of(tokenizer):
                self.course = GPT(hf_export.course_config_of(hf_model.config))
        except UsageError:
            self.course = None
        self.kind = "course greedy_accuracy" if self.course is not None else "transformers generate (greedy)"

    def __call__(self, hf_model) -> float:

        if self.course is None:
            return hf_greedy_accuracy(hf_model, self.tokenizer, self.task)
        device = next(hf_model.parameters()).device
        hf_export.load_into_course(hf_model, self.course.to(device))
        return greedy_accuracy(self.course, self.task)


# --------------------------------------------------------------------------------------- the callback
def make_callback(trl_transformers, *, updates: int, hp, evaluator, log, bar, is_main):
    """A TrainerCallback that turns TRL's per-update logs into one course record per RL step (rollout),
    evaluates every eval_every steps, and stops on the course's time budget or accuracy target."""
    TrainerCallback = trl_transformers.TrainerCallback

    class CourseRecords(TrainerCallback):
        def __init__(self):
            self.records, self.pending, self.step_time, self.wall = [], [], 0.0, 0.0
            self.accuracy = None
            self.t0 = None

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            elapsed = time.perf_counter() - self.t0
            self.step_time += elapsed
            self.wall += elapsed
            if state.global_step % updates:
                return
            step = state.global_step // updates
            self.accuracy = None
            if step % hp["eval_every"] == 0 or state.global_step >= state.max_steps:
                self.accuracy = evaluator(model)
                if hp["stop_at_accuracy"] is not None and self.accuracy >= hp["stop_at_accuracy"]:
                    control.should_training_stop = True
            if hp["time_budget_s"] is not None and self.wall >= hp["time_budget_s"]:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            self.pending.append(dict(logs))
            if state.global_step % updates:
                return
            step = state.global_step // updates
            first = next((r for r in self.pending if "reward" in r), {})
            mean = lambda key: _mean([r.get(key) for r in self.pending])  # noqa: E731
            record = dict(
                step=step, reward_mean=first.get("reward"), reward_std=first.get("reward_std"),
                loss=mean("loss"), kl=mean("kl"), clip_fraction=mean("clip_ratio/region_mean"),
                entropy=mean("entropy"), grad_norm=mean("grad_norm"), lr=self.pending[-1].get("learning_rate"),
                response_length=first.get("completions/mean_length"),
                zero_std_fraction=first.get("frac_reward_zero_std"), optimizer_steps=len(self.pending),
                accuracy=self.accuracy, step_time_s=self.step_time, wall_s=self.wall)
            self.records.append(record)
            if is_main:
                log.step(record)
            self.pending, self.step_time = [], 0.0
            if bar is not None:
                bar.update(1)
                shown = "-" if self.accuracy is None else f"{self.accuracy:.1%}"
                bar.set_postfix(reward=f"{record['reward_mean'] or float('nan'):.3f}", acc=shown)

    return CourseRecords()


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# ------------------------------------------------------------------------------------------ the command
def _load_start(args, transformers):
    """(hf_model, tokenizer, task, source) from --init (exported to OUT/hf_init first) or --model."""
    if (args.init is None) == (args.model is None):
        raise UsageError("give exactly one of --init CKPT (a course checkpoint, e.g. runs/demo/sft/model.pt) "
                         "and --model PATH (a local transformers folder)")
    if args.init is not None:
        course, saved_task = hf_export.load_policy(args.init)
        task = task_of(args, saved_task)
        # The export stays in OUT/hf_init: TRL builds its reference model (beta > 0) from the model's folder.
        folder = Path(args.out) / "hf_init"
        from accelerate import PartialState

        with PartialState().main_process_first():  # one process writes, the others then read
            if PartialState().is_main_process:
                hf_export.export_model(course, folder, task=task, force=True, source=str(args.init))
            hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return hf, tokenizer, task, str(args.init)
    path = args.model
    if not (path / "config.json").is_file():
        raise UsageError(f"--model {path}: not a transformers model folder (no config.json)")
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UsageError(f"--model {path}: cannot load it with transformers ({str(err).splitlines()[0]})") from None
    saved = getattr(hf.config, "course_task", None)
    name = args.task or (saved or {}).get("name")
    if name is None:
        raise UsageError(f"--model {path} is not an exported course model: say which task with --task sort|add")
    options = (saved or {}).get("options", {}) if saved and saved.get("name") == name else {}
    if args.op and name == "add":
        options = dict(options, op=args.op)
    task = make_task(name, **options)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return hf, tokenizer, task, str(path)


def world_size() -> int:
    """Processes of this run (accelerate launch / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def main(args) -> int:
    trl, transformers, _ = require_trl()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.device == "cuda":
        pick_device("cuda")  # one clear line when there is no GPU
    seed_everything(args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    hf, tokenizer, task, source = _load_start(args, transformers)
    hp = rl_hparams("grpo", task, args, args.steps)
    if hp["reward"] == "format":
        raise UsageError("--reward format rewards the shape only: train with exact or partial")
    processes = world_size()
    config_kwargs, rows = trl_settings(hp, task, args, processes)
    updates = hp["num_iterations"] * hp["num_minibatches"]
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"TRL {trl.__version__} GRPOTrainer on {task!r} from {source} "
              f"({sum(p.numel() for p in hf.parameters()):,} parameters), {processes} process(es)")
        print(format_table(rows), flush=True)

    dataset = build_dataset(task, hp, args.seed)
    evaluator = Evaluator(hf, tokenizer, task)
    trainer = make_trainer(hf, tokenizer, task, hp["reward"], dataset, output_dir=str(out / "hf_model"),
                           bf16=args.bf16, use_cpu=args.device == "cpu", **config_kwargs)
    device = trainer.accelerator.device
    accuracy_before = evaluator(trainer.model)
    log = RunLog(out) if is_main else None
    bar = None
    if is_main and not args.quiet:
        from tqdm.auto import tqdm
        bar = tqdm(total=hp["steps"], desc=f"TRL GRPO {task.name}", dynamic_ncols=True, leave=False)
    record0 = dict(step=0, accuracy=accuracy_before, step_time_s=0.0, wall_s=0.0)
    if is_main:
        log.step(record0)
    callback = make_callback(transformers, updates=updates, hp=hp, evaluator=evaluator, log=log, bar=bar,
                             is_main=is_main)
    trainer.add_callback(callback)
    cpu_start = time.process_time()
    trainer.train()
    cpu_s = time.process_time() - cpu_start   # this process's CPU seconds (evaluations included, as the course's)
    if bar is not None:
        bar.close()
    model = trainer.accelerator.unwrap_model(trainer.model)
    records = callback.records
    accuracy_after = next((r["accuracy"] for r in reversed(records) if r["accuracy"] is not None), None)
    if accuracy_after is None:
        accuracy_after = evaluator(model)
    if not is_main:
        return 0
    log.close()
    plot_curves(log.metrics_path, out / "curves.png", keys=PLOTS["grpo"])
    model.save_pretrained(out / "hf_model")
    tokenizer.save_pretrained(out / "hf_model")
    checkpoint = None
    if evaluator.course is not None:
        course = hf_export.load_into_course(model, evaluator.course.to(device)).cpu()
        checkpoint = save_checkpoint(out / "model.pt", course, task=task, preset=preset_of(course), step=len(records),
                                     extra=dict(algo="grpo", engine="trl", hparams=hp, seed=args.seed))
    step_times = [r["step_time_s"] for r in records]
    reached = [r["step"] for r in records if (r.get("accuracy") or 0) >= 0.90]
    summary = dict(
        task=task.name, task_options=task.options, algo="grpo", impl="trl", engine="trl", trl_version=trl.__version__,
        transformers_version=transformers.__version__, device=str(device), processes=processes, seed=args.seed,
        accuracy_before=accuracy_before, accuracy_after=accuracy_after, rl_steps=len(records),
        rl_wall_time_s=callback.wall, rl_cpu_time_s=cpu_s,
        step_time_median_s=statistics.median(step_times) if step_times else None,
        optimizer_steps=trainer.state.global_step, first_step_at_90=reached[0] if reached else None,
        final_reward_mean=next((r["reward_mean"] for r in reversed(records) if r["reward_mean"] is not None), None),
        evaluator=evaluator.kind, init=str(args.init) if args.init else None,
        model=str(args.model) if args.model else None, hparams=hp,
        grpo_config=dict(config_kwargs), checkpoint=str(checkpoint) if checkpoint else None,
        hf_model=str(out / "hf_model"))
    write_summary(out, summary)
    print(f"TRL GRPO {task.name}: held-out exact match {accuracy_before:.1%} -> {accuracy_after:.1%} in "
          f"{len(records)} steps ({trainer.state.global_step} optimizer updates, {callback.wall:.1f} s of RL); "
          f"outputs in {out}/")
    return 0
