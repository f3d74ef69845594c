"""Export a course checkpoint as a transformers GPT-2 folder (and load one back): `export-hf CKPT DIR [--force]`.

The course's GPT (training/model.py) is GPT-2's architecture at a tiny size, so it maps onto transformers'
`GPT2LMHeadModel` weight for weight:

    course                          transformers GPT-2
    trunk.wte / trunk.wpe           transformer.wte / transformer.wpe      (lm_head tied to wte, as here)
    blocks.i.ln_1, ln_2, ln_f       transformer.h.i.ln_1, ln_2, ln_f       (LayerNorm with bias, eps 1e-5)
    blocks.i.attn.c_attn (Linear)   transformer.h.i.attn.c_attn (Conv1D)   weight transposed: Conv1D is x @ W
    blocks.i.attn.c_proj, mlp.c_fc, mlp.c_proj                             the same, transposed
    F.gelu (exact, erf)             activation_function="gelu"             (GPT-2's default "gelu_new" is the tanh
                                                                            approximation: 1e-3 off, so not used)

The folder holds config.json, model.safetensors, generation_config.json (greedy, EOS and PAD ids, the task's
max_new_tokens) and a fast tokenizer (tokenizer.json) over the course's characters: one token per character,
`<pad>` id 0 and `<eos>` id 1, as training/tokenizer.py. So

    AutoModelForCausalLM.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR), pipeline("text-generation", DIR)

all work offline, and the logits equal the course model's (tests/test_export_hf.py: max |diff| <= 1e-5).
`load_into_course` copies a (trained) transformers model back into the course GPT, which is how `python -m training
trl` measures accuracy with the course's own greedy evaluator.

transformers is imported only inside the functions: `make demo` does not install it (requirements-test.txt does).
"""
import json
from pathlib import Path

import torch

from .checkpoint import CheckpointError, model_from_checkpoint, task_from_checkpoint
from .errors import UsageError
from .model import GPT, GPTConfig
from .tokenizer import EOS, EOS_ID, PAD, PAD_ID, TOKENIZER

INSTALL_HINT = "pip install -r requirements-test.txt (transformers, trl, datasets, accelerate; `make test` does it)"
# The course's Linear layers whose weights GPT-2 stores transposed (Conv1D: y = x @ W + b, W is [in, out]).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# A chat "template" that is just the messages' text: engines that always apply one (verl's RLHFDataset) then feed
# the model exactly the course prompt, e.g. [{"role": "user", "content": "3141592653="}] -> "3141592653=".
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "course_export.json")


def require_transformers():
    """Import and return transformers, or one clear UsageError saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UsageError(f"this command needs the transformers library, which is not installed: {INSTALL_HINT}")
    return transformers


# ------------------------------------------------------------------------------------------------ weights
def gpt2_config(config: GPTConfig, **extra):
    """The transformers GPT2Config with the course model's sizes and exact operations (no dropout)."""
    transformers = require_transformers()
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=4 * config.n_embd, activation_function="gelu", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **extra)


def course_config_of(hf_config) -> GPTConfig:
    """The course GPTConfig of a GPT-2 config (raises UsageError when it is not one the course GPT can be)."""
    problems = []
    if getattr(hf_config, "model_type", None) != "gpt2":
        problems.append(f"model_type {getattr(hf_config, 'model_type', None)!r} (needs gpt2)")
    else:
        if hf_config.activation_function != "gelu":
            problems.append(f"activation {hf_config.activation_function!r} (the course GPT uses exact gelu)")
        if hf_config.n_inner not in (None, 4 * hf_config.n_embd):
            problems.append(f"n_inner {hf_config.n_inner} (the course MLP is 4 * n_embd)")
        if abs(hf_config.layer_norm_epsilon - 1e-5) > 1e-12:
            problems.append(f"layer_norm_epsilon {hf_config.layer_norm_epsilon} (the course uses 1e-5)")
        if not getattr(hf_config, "tie_word_embeddings", True):
            problems.append("untied lm_head (the course GPT ties it to wte)")
        if hf_config.scale_attn_by_inverse_layer_idx or hf_config.reorder_and_upcast_attn:
            problems.append("non-standard attention scaling")
    if problems:
        raise UsageError("this transformers model cannot become the course GPT: " + "; ".join(problems))
    return GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
                     n_head=hf_config.n_head, n_embd=hf_config.n_embd)


def to_hf_state_dict(model: GPT) -> dict:
    """The course GPT's weights under GPT-2's names (Linear weights transposed into Conv1D layout)."""
    out = {}
    for name, tensor in model.state_dict().items():
        new = name.replace("trunk.", "transformer.", 1).replace(".blocks.", ".h.")
        if name.endswith(_TRANSPOSED):
            tensor = tensor.t()
        out[new] = tensor.detach().clone().contiguous()
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def from_hf_state_dict(state: dict) -> dict:
    """GPT-2 weights (transformers names) -> the course GPT's state_dict (the inverse of to_hf_state_dict)."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight" or ".attn.bias" in name or ".attn.masked_bias" in name:
            continue  # tied to wte / old transformers' causal-mask buffers
        new = name.replace("transformer.", "trunk.", 1).replace(".h.", ".blocks.")
        if new.endswith(_TRANSPOSED):
            tensor = tensor.t()
        out[new] = tensor.detach().clone().contiguous()
    return out


def course_to_hf(model: GPT, **config_extra):
    """A transformers GPT2LMHeadModel (float32, eval mode) with exactly the course model's weights."""
    transformers = require_transformers()
    hf = transformers.GPT2LMHeadModel(gpt2_config(model.config, **config_extra))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:  # a programming error, not a user error: say exactly what did not fit
        raise RuntimeError(f"GPT-2 weights do not fit: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.to(next(model.parameters()).device).eval()


def load_into_course(hf_model, course_model: GPT) -> GPT:
    """Copy a transformers GPT-2's weights into `course_model` in place (e.g. after TRL trained it); returns it."""
    device = course_model.trunk.wte.weight.device
    state = {k: v.to(device) for k, v in from_hf_state_dict(hf_model.state_dict()).items()}
    course_model.load_state_dict(state)
    return course_model


def hf_to_course(hf_model) -> GPT:
    """A new course GPT built from a transformers GPT-2 (its config checked by course_config_of)."""
    model = GPT(course_config_of(hf_model.config))
    return load_into_course(hf_model, model.to(next(hf_model.parameters()).device))


# ---------------------------------------------------------------------------------------------- tokenizer
def make_tokenizer():
    """A transformers fast tokenizer over the course vocabulary: ids identical to training.tokenizer.TOKENIZER.

    One token per character (a WordLevel model after a split into single characters), `<pad>` (0) and `<eos>` (1)
    special, no BOS added, decoding joins the characters without spaces; its chat template is the messages' bare
    text (CHAT_TEMPLATE). A character outside the vocabulary is an error, as in the course tokenizer.
    """
    transformers = require_transformers()
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(TOKENIZER.tokens)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([PAD, EOS])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=None, unk_token=None,
        padding_side="left", model_max_length=10_000, clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE)


def course_vocabulary_of(tokenizer) -> bool:
    """True when `tokenizer` maps every course token to the course id (an exported course model's tokenizer)."""
    vocab = tokenizer.get_vocab()
    return len(vocab) == TOKENIZER.vocab_size and all(vocab.get(t) == i for i, t in enumerate(TOKENIZER.tokens))


# ------------------------------------------------------------------------------------------------- export
def export_model(model: GPT, out_dir, *, task=None, force: bool = False, source: str | None = None) -> Path:
    """Write the transformers folder for `model` (and `task`'s generation length) into out_dir."""
    transformers = require_transformers()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir} exists and is not empty: choose a new folder or add --force to overwrite it")
    extra = {}
    if task is not None:
        extra["course_task"] = {"name": task.name, "options": dict(task.options)}
    hf = course_to_hf(model, **extra)
    hf.generation_config = transformers.GenerationConfig(
        do_sample=False, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        max_new_tokens=task.max_new_tokens if task is not None else model.config.block_size // 2)
    out_dir.mkdir(parents=True, exist_ok=True)
    if force:
        for name in _WRITTEN:
            (out_dir / name).unlink(missing_ok=True)
    hf.cpu().save_pretrained(out_dir, safe_serialization=True)
    make_tokenizer().save_pretrained(out_dir)
    info = {"source": source, "task": extra.get("course_task"), "tokens": TOKENIZER.tokens,
            "transformers_version": transformers.__version__}
    (out_dir / "course_export.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def load_policy(ckpt_path) -> tuple[GPT, object]:
    """(the GPT policy in eval mode, its task) of a course checkpoint; CheckpointError when it holds no policy."""
    model, ckpt = model_from_checkpoint(ckpt_path, "cpu")
    if not isinstance(model, GPT):
        raise CheckpointError(f"{ckpt_path} holds a {type(model).__name__}, not a GPT policy: give a policy "
                              f"checkpoint")
    return model.eval(), task_from_checkpoint(ckpt)


def export_checkpoint(ckpt_path, out_dir, force: bool = False) -> Path:
    """`export-hf`: a course checkpoint (a GPT policy) -> a transformers folder."""
    model, task = load_policy(ckpt_path)
    return export_model(model, out_dir, task=task, force=force, source=str(ckpt_path))


def max_logit_difference(course_model: GPT, hf_model, idx: torch.Tensor) -> float:
    """max |course logits - transformers logits| on token ids idx [N, L] (the export check)."""
    with torch.no_grad():
        ours = course_model.eval()(idx)
        theirs = hf_model.eval()(input_ids=idx).logits
    return float((ours - theirs).abs().max())


# ---------------------------------------------------------------------------------------------- the command
def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="a course checkpoint (model.pt) of a GPT policy")
    parser.add_argument("out", type=Path, metavar="DIR", help="the transformers folder to write")
    parser.add_argument("--force", action="store_true", help="write into DIR even if it is not empty")


def main(args) -> int:
    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model, task = load_policy(args.checkpoint)
    out = export_model(model, args.out, task=task, force=args.force, source=str(args.checkpoint))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    probe = task.eval_batch().prompts[:8]
    diff = max_logit_difference(model, hf, probe)
    print(f"exported {args.checkpoint} ({task.name}) to {out}/ as transformers GPT-2 "
          f"({sum(p.numel() for p in model.parameters()):,} parameters); max |logit difference| on 8 held-out "
          f"prompts: {diff:.1e}")
    print(f"try: python -c \"from transformers import pipeline; print(pipeline('text-generation', '{out}')"
          f"('{TOKENIZER.decode(probe[0])}', do_sample=False, max_new_tokens={task.max_new_tokens}))\"  "
          f"(the pipeline samples unless told not to: its defaults override the folder's greedy generation config)")
    return 0
