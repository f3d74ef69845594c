import pytest
import torch

from training.model import GPT, GPTConfig, PRESETS, UnknownPresetError, ValueModel, count_parameters, make_model
from training.tasks import make_task
from training.tokenizer import TOKENIZER

V = TOKENIZER.vocab_size


def random_model(seed=0, block_size=25, **kw):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32, **kw)
    model = GPT(config)
    with torch.no_grad():  # larger weights than the init, so every position really mixes
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def close(a, b):
    scale = max(1.0, b.abs().max().item())
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def test_preset_sizes():
    task = make_task("sort")
    nano = make_model("nano", V, task.block_size)
    assert (nano.config.n_layer, nano.config.n_head, nano.config.n_embd) == (3, 3, 48)
    assert 84_000 < count_parameters(nano) < 90_000  # "about 87k"
    micro = make_model("micro", V, task.block_size)
    assert (micro.config.n_layer, micro.config.n_head, micro.config.n_embd) == (4, 4, 128)
    assert set(PRESETS) == {"nano", "micro"}
    with pytest.raises(UnknownPresetError, match="huge"):
        make_model("huge", V, 25)


def test_embeddings_are_tied():
    model = random_model()
    names = [n for n, _ in model.named_parameters()]
    assert not any("lm_head" in n for n in names)
    ids = torch.randint(0, V, (2, 5))
    h = model.trunk(ids)
    assert close(model(ids), h @ model.trunk.wte.weight.T)


def test_causality_later_tokens_never_change_earlier_logits():
    model = random_model()
    ids = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    base = model(ids)
    for k in (0, 7, 19):
        changed = ids.clone()
        changed[:, k] = (changed[:, k] + 5) % V
        out = model(changed)
        assert torch.equal(out[:, :k], base[:, :k]) or close(out[:, :k], base[:, :k]), f"position {k} leaked back"
        assert not close(out[:, k:], base[:, k:]), "changing a token must change its own and later logits"


def test_kv_cache_gives_the_same_logits_as_the_full_forward():
    model = random_model()
    ids = torch.randint(0, V, (4, 18), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    cache = model.new_kv_cache(4)
    parts = [model(ids[:, :6], kv_cache=cache)]  # prefill
    for t in range(6, 12):  # one token at a time
        parts.append(model(ids[:, t : t + 1], kv_cache=cache))
    parts.append(model(ids[:, 12:], kv_cache=cache))  # several tokens after a filled cache
    assert cache.length == 18
    assert close(torch.cat(parts, dim=1), full)


def test_too_long_a_sequence_is_refused():
    model = random_model(block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_value_model_shapes_and_copy_of_the_policy_trunk():
    policy = random_model()
    critic = ValueModel.from_policy(policy)
    ids = torch.randint(0, V, (3, 10))
    values = critic(ids)
    assert values.shape == (3, 10) and values.dtype == torch.float32
    assert torch.all(values == 0), "a fresh critic head starts at zero"
    assert close(critic.trunk(ids), policy.trunk(ids))
    fresh = ValueModel(policy.config)
    assert fresh(ids).shape == (3, 10)


def test_repeat_rows_gives_each_row_of_a_group_its_prompts_cache():
    model = random_model()
    prompts = torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(3))
    rest = torch.randint(0, V, (12, 4), generator=torch.Generator().manual_seed(4))
    cache = model.new_kv_cache(3)
    model(prompts, kv_cache=cache)
    shared = cache.repeat_rows(4)
    assert shared.length == 6 and shared.keys[0].shape[0] == 12
    repeated = prompts.repeat_interleave(4, dim=0)
    expected = model(torch.cat([repeated, rest], dim=1))[:, 6:]
    assert close(model(rest, kv_cache=shared), expected)


def test_gradients_flow_through_a_shared_prompt_cache():
    """The training pass may run a prompt once for its G rows: same loss and same gradients as G copies."""
    model = random_model().train()
    prompts = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(5))
    rest = torch.randint(0, V, (6, 4), generator=torch.Generator().manual_seed(6))
    weights = torch.randn(6, 4, V, generator=torch.Generator().manual_seed(7))
    full = model(torch.cat([prompts.repeat_interleave(3, dim=0), rest], dim=1))[:, 5:]
    (full * weights).sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    cache = model.new_kv_cache(2)
    model(prompts, kv_cache=cache)
    shared = model(rest, kv_cache=cache.repeat_rows(3))
    assert close(shared, full)
    (shared * weights).sum().backward()
    for name, p in model.named_parameters():
        assert close(p.grad, expected[name]), name
