"""Write the graded tests' reference values: tests/autograder/snapshots/<exercise>.json.

Instructors only: it runs the reference solutions (solutions/). Inputs are drawn from a seeded
generator, rounded to 4 decimals so the files stay readable, and stored next to the outputs, so the
graded tests never depend on a random generator or on solutions/. Everything runs in float64.

    python tools/make_snapshots.py            # rewrite both snapshot files
    python tools/make_snapshots.py --check    # exit 1 if a stored file differs from what would be written
"""
import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loss.names import LOSS_AGG_MODES  # noqa: E402
from training.impl import load  # noqa: E402

SNAPSHOTS = ROOT / "tests" / "autograder" / "snapshots"
SEED = 0
DTYPE = torch.float64


def draw(generator, *shape, scale=1.0, low=None, high=None):
    """Normal(0, scale) or Uniform(low, high) numbers, rounded to 4 decimals."""
    if low is not None:
        values = low + (high - low) * torch.rand(*shape, generator=generator, dtype=DTYPE)
    else:
        values = scale * torch.randn(*shape, generator=generator, dtype=DTYPE)
    return torch.round(values, decimals=4)


def prefix_mask(lengths, width):
    """[N, width] mask with the first lengths[i] entries of row i set to 1."""
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(DTYPE)


def with_garbage(values, mask, generator):
    """Padding filled with large finite garbage: a mask that is ignored shows up at once."""
    return torch.where(mask.bool(), values, draw(generator, *values.shape, scale=5.0))


def plain(value):
    """Tensors and floats as JSON numbers with 12 significant digits (far below the test tolerance)."""
    if isinstance(value, torch.Tensor):
        return plain(value.tolist())
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value


def grpo_snapshot(module, generator) -> dict:
    rewards = torch.cat([torch.randint(0, 2, (2, 5), generator=generator).to(DTYPE),
                         draw(generator, 1, 5), torch.full((1, 5), 0.7, dtype=DTYPE)])
    advantages = {"rewards": rewards}
    for normalize_std in (True, False):
        key = "with_std" if normalize_std else "without_std"
        advantages[key] = module.group_advantages(rewards, normalize_std=normalize_std)

    logp, ref_logp = draw(generator, 3, 4, low=-4.0, high=-0.05), draw(generator, 3, 4, low=-4.0, high=-0.05)
    kl = {"logp": logp, "ref_logp": ref_logp}
    kl.update({kind: module.kl_estimate(logp, ref_logp, kind) for kind in ("k1", "k2", "k3")})

    mask = prefix_mask([6, 3, 0, 1, 4], 6)
    loss_mat = with_garbage(draw(generator, 5, 6), mask, generator)
    aggregate = {"loss_mat": loss_mat, "mask": mask, "max_len": 10}
    aggregate.update({mode: module.aggregate_loss(loss_mat, mask, mode) for mode in LOSS_AGG_MODES})
    aggregate["seq-mean-token-sum-norm, max_len=10"] = module.aggregate_loss(
        loss_mat, mask, "seq-mean-token-sum-norm", aggregate["max_len"])

    # One batch of B=2 prompts x G=4 completions x T=6 tokens: ratios up to ~exp(+-0.6), so some clip.
    B, G, T = 2, 4, 6
    mask = prefix_mask([6, 2, 4, 0, 5, 1, 3, 6], T).reshape(B, G, T)
    policy = draw(generator, B, G, T, low=-3.0, high=-0.05)
    inputs = {
        "policy_logprobs": with_garbage(policy, mask, generator),
        "old_policy_logprobs": with_garbage(policy + draw(generator, B, G, T, scale=0.3), mask, generator),
        "reference_logprobs": with_garbage(policy + draw(generator, B, G, T, scale=0.3), mask, generator),
        "rewards": torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.2, 0.9, 0.5, 0.4]], dtype=DTYPE),
        "response_mask": mask,
    }
    configs = {
        "default": {},
        "dr_grpo": {"normalize_std": False, "loss_agg_mode": "seq-mean-token-sum-norm"},
        "dapo": {"clip_epsilon_high": 0.28, "loss_agg_mode": "token-mean", "kl_beta": 0.0},
        "k1_token_sum": {"kl_estimator": "k1", "loss_agg_mode": "seq-mean-token-sum", "kl_beta": 0.05},
        "k2_small_clip": {"kl_estimator": "k2", "clip_epsilon": 0.1, "kl_beta": 0.2},
        "gspo": {"importance_sampling_level": "sequence", "clip_epsilon": 0.05},
        "sequence_level": {},
    }
    cases = {}
    for name, config in configs.items():
        case_inputs = dict(inputs)
        if name == "sequence_level":   # [B, G] whole-sequence logprobs: the masked sums of the batch above
            case_inputs = {key: (value * mask).sum(-1) for key, value in inputs.items() if key.endswith("logprobs")}
            case_inputs["rewards"] = inputs["rewards"]
        loss_fn = module.GRPOLoss(**config)
        policy_logprobs = case_inputs["policy_logprobs"].clone().requires_grad_(True)
        loss = loss_fn(policy_logprobs, case_inputs["old_policy_logprobs"], case_inputs["rewards"],
                       case_inputs["reference_logprobs"], case_inputs.get("response_mask"))
        loss.backward()
        metrics = {key: loss_fn.metrics[key] for key in ("clip_fraction", "kl", "ratio_mean")}
        cases[name] = {"config": config, "loss": loss, "grad": policy_logprobs.grad, "metrics": metrics}
        if name == "sequence_level":
            cases[name]["inputs"] = case_inputs
    return {"group_advantages": advantages, "kl_estimate": kl, "aggregate_loss": aggregate,
            "grpo_inputs": inputs, "grpo_cases": cases}


def ppo_snapshot(module, generator) -> dict:
    B, T = 3, 6
    mask = prefix_mask([6, 4, 1], T)
    rewards = with_garbage(torch.zeros(B, T, dtype=DTYPE), mask, generator)
    rewards[0, 5], rewards[1, 3], rewards[2, 0] = 1.0, 0.3, -0.5      # outcome reward on each last token
    rewards[0, 2] = -0.1                                             # and one per-token penalty
    values = with_garbage(draw(generator, B, T, scale=0.5), mask, generator)
    gae = {"rewards": rewards, "values": values, "mask": mask, "cases": []}
    for gamma, lam in ((0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.8, 0.7)):
        advantages, returns = module.compute_gae(rewards, values, gamma, lam, mask)
        gae["cases"].append({"gamma": gamma, "lam": lam, "advantages": advantages, "returns": returns})

    policy = draw(generator, B, T, low=-3.0, high=-0.05)
    old_values = draw(generator, B, T, scale=0.5)
    inputs = {
        "policy_logprobs": with_garbage(policy, mask, generator),
        "old_policy_logprobs": with_garbage(policy + draw(generator, B, T, scale=0.3), mask, generator),
        "values": with_garbage(old_values + draw(generator, B, T, scale=0.3), mask, generator),
        "returns": draw(generator, B, T),
        "advantages": draw(generator, B, T),
        "entropy": with_garbage(draw(generator, B, T, low=0.1, high=2.0), mask, generator),
        "response_mask": mask,
        "old_values": old_values,
    }
    configs = {
        "default": {},
        "value_clip": {"value_clip": 0.2},
        "coefficients": {"clip_epsilon": 0.1, "value_loss_coef": 1.0, "entropy_coef": 0.05},
    }
    cases = {}
    for name, config in configs.items():
        loss_fn = module.PPOLoss(**config)
        policy_logprobs = inputs["policy_logprobs"].clone().requires_grad_(True)
        values = inputs["values"].clone().requires_grad_(True)
        loss = loss_fn(policy_logprobs, inputs["old_policy_logprobs"], values, inputs["returns"],
                       inputs["advantages"], inputs["entropy"], inputs["response_mask"], inputs["old_values"])
        loss.backward()
        keys = ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")
        metrics = {key: loss_fn.metrics[key] for key in keys}
        cases[name] = {"config": config, "loss": loss, "grad_policy": policy_logprobs.grad,
                       "grad_values": values.grad, "metrics": metrics}
    return {"gae": gae, "ppo_inputs": inputs, "ppo_cases": cases}


def to_json(value, indent=0) -> str:
    """JSON with one line per row of numbers (readable matrices)."""
    pad = "  " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(key)}: {to_json(item, indent + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list) and any(isinstance(item, (list, dict)) for item in value):
        return "[\n" + ",\n".join(pad + to_json(item, indent + 1) for item in value) + "\n" + "  " * indent + "]"
    return json.dumps(value)


def snapshots() -> dict[str, str]:
    """File name -> text, for both exercises."""
    generator = torch.Generator().manual_seed(SEED)
    made_by = f"tools/make_snapshots.py (seed {SEED}, float64): reference values, do not edit by hand"
    out = {}
    for exercise, make in (("grpo_loss", grpo_snapshot), ("ppo_loss", ppo_snapshot)):
        data = {"made_by": made_by, **make(load(exercise, "solutions"), generator)}
        out[f"{exercise}.json"] = to_json(plain(data)) + "\n"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a stored snapshot is out of date")
    args = parser.parse_args(argv)
    stale = 0
    for name, text in snapshots().items():
        path = SNAPSHOTS / name
        if path.exists() and path.read_text() == text:
            continue
        stale += 1
        if args.check:
            print(f"out of date: {path}")
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
