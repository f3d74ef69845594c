"""`python -m training export-hf`: the course GPT as a transformers GPT-2 folder with identical logits, and back."""
import os

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install -r requirements-test.txt (make test does it)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

from training import cli, hf_export  # noqa: E402
from training.checkpoint import save_checkpoint  # noqa: E402
from training.errors import UsageError  # noqa: E402
from training.model import ValueModel, make_model  # noqa: E402
from training.rollout import greedy  # noqa: E402
from training.tasks import make_task  # noqa: E402
from training.tokenizer import EOS_ID, PAD_ID, TOKENIZER  # noqa: E402


def noisy_model(task, seed=0, scale=0.3):
    """A nano GPT whose weights are far from their tiny init (so a transposed or misnamed weight shows)."""
    torch.manual_seed(seed)
    model = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    task = make_task("sort")
    model = noisy_model(task)
    folder = hf_export.export_model(model, tmp_path_factory.mktemp("hf") / "sort", task=task)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return task, model, folder, hf


def test_the_folder_holds_config_safetensors_tokenizer_and_generation_config(exported):
    _, _, folder, hf = exported
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    assert hf.config.model_type == "gpt2" and hf.config.activation_function == "gelu"
    assert hf.config.layer_norm_epsilon == 1e-5 and hf.config.tie_word_embeddings
    assert hf.generation_config.eos_token_id == EOS_ID and hf.generation_config.pad_token_id == PAD_ID
    assert hf.generation_config.do_sample is False


def test_logits_equal_the_course_models(exported):
    task, model, _, hf = exported
    ids = torch.randint(0, TOKENIZER.vocab_size, (6, task.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(input_ids=ids).logits
        short = hf(input_ids=ids[:, :3], attention_mask=torch.ones_like(ids[:, :3])).logits
    assert ours.abs().max() > 1.0  # the logits are not trivially small
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours[:, :3] - short).abs().max() <= 1e-5


def test_gelu_new_would_not_match(exported):
    """Why activation_function="gelu": GPT-2's default tanh approximation moves the logits by far more than 1e-5."""
    task, model, _, _ = exported
    config = hf_export.gpt2_config(model.config)
    config.activation_function = "gelu_new"
    approx = transformers.GPT2LMHeadModel(config)
    approx.load_state_dict(hf_export.to_hf_state_dict(model), strict=False)
    ids = task.eval_batch().prompts[:8]
    with torch.no_grad():
        assert (approx.eval()(input_ids=ids).logits - model(ids)).abs().max() > 1e-4


def test_tokenizer_has_the_course_ids(exported):
    _, _, folder, _ = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in ("3141592653=", "007+042=", "12-3*4="):
        assert tokenizer(text)["input_ids"] == TOKENIZER.encode(text)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)
    assert tokenizer.decode([3, 4, EOS_ID, PAD_ID], skip_special_tokens=True) == "12"
    assert hf_export.course_vocabulary_of(tokenizer)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "21="}], tokenize=False) == "21="


def test_greedy_generation_equals_the_course_evaluators(exported):
    task, model, _, hf = exported
    prompts = task.eval_batch().prompts[:16]
    ours = greedy(model, prompts, task.max_new_tokens)
    out = hf.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                      max_new_tokens=task.max_new_tokens)[:, prompts.shape[1]:]
    for row_ours, row_hf in zip(ours.tolist(), out.tolist()):
        assert TOKENIZER.decode(row_ours) == TOKENIZER.decode(row_hf)


def test_weights_come_back_into_the_course_model(exported):
    task, model, _, hf = exported
    back = hf_export.hf_to_course(hf)
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    trained = hf_export.course_to_hf(model)
    with torch.no_grad():  # change the transformers weights, then copy them into a course model
        trained.transformer.h[1].attn.c_attn.weight.mul_(1.5)
        trained.transformer.wte.weight.add_(0.1)
    target = make_model("nano", TOKENIZER.vocab_size, task.block_size)
    hf_export.load_into_course(trained, target)
    ids = task.eval_batch().prompts[:4]
    with torch.no_grad():
        assert (target.eval()(ids) - trained.eval()(input_ids=ids).logits).abs().max() <= 1e-5


def test_a_model_the_course_gpt_cannot_be_is_refused(exported):
    _, model, _, _ = exported
    config = hf_export.gpt2_config(model.config)
    config.activation_function = "relu"
    with pytest.raises(UsageError, match="activation"):
        hf_export.course_config_of(config)


def test_pipeline_greedy_output_is_the_course_models(exported):
    task, model, folder, _ = exported
    prompt = TOKENIZER.decode(task.eval_batch().prompts[0])
    generate = transformers.pipeline("text-generation", str(folder))
    text = generate(prompt, do_sample=False, max_new_tokens=task.max_new_tokens)[0]["generated_text"]
    ours = greedy(model, task.eval_batch().prompts[:1], task.max_new_tokens)[0]
    assert text == prompt + TOKENIZER.decode(ours)


@pytest.mark.slow
def test_an_exported_weak_model_sorts_a_held_out_prompt_through_the_pipeline(tmp_path):
    from training.sft import weak_model

    model, task, _ = weak_model("sort")
    held_out = task.eval_batch()
    completions = greedy(model, held_out.prompts, task.max_new_tokens)
    right = task.reward(completions, held_out.answers, kind="exact").nonzero().flatten()
    assert len(right) > 0
    i = int(right[0])
    folder = hf_export.export_model(model, tmp_path / "weak", task=task)
    generate = transformers.pipeline("text-generation", str(folder))
    prompt, answer = TOKENIZER.decode(held_out.prompts[i]), TOKENIZER.decode(held_out.answers[i])
    assert generate(prompt, do_sample=False, max_new_tokens=task.max_new_tokens)[0]["generated_text"] == prompt + answer


# ------------------------------------------------------------------------------------------ the command
@pytest.fixture
def checkpoint(tmp_path):
    task = make_task("sort")
    return save_checkpoint(tmp_path / "model.pt", noisy_model(task), task=task, preset="nano", step=0)


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_hf_command_writes_a_loadable_folder(checkpoint, tmp_path, capsys):
    code, out, err = run(capsys, "export-hf", checkpoint, tmp_path / "hf")
    assert code == 0, err
    assert "max |logit difference|" in out
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True) is not None


def test_export_hf_refuses_a_non_empty_folder_without_force(checkpoint, tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "export-hf", checkpoint, tmp_path / "hf")
    assert code == 2 and err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    code, _, err = run(capsys, "export-hf", checkpoint, tmp_path / "hf", "--force")
    assert code == 0, err
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"  # --force overwrites only the export's files


@pytest.mark.parametrize("problem", ["missing", "corrupt", "critic"])
def test_export_hf_bad_checkpoint_is_one_line_and_exit_2(problem, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if problem == "corrupt":
        path.write_bytes(b"not a checkpoint at all")
    elif problem == "critic":
        task = make_task("sort")
        critic = ValueModel(make_model("nano", TOKENIZER.vocab_size, task.block_size).config)
        save_checkpoint(path, critic, task=task, preset="nano", step=0)
    code, out, err = run(capsys, "export-hf", path, tmp_path / "hf")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "hf").exists()
