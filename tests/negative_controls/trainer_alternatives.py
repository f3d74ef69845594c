"""Positive controls: correct trainers written differently from the reference; each must get FULL marks.

A graded test that fails one of these rejects a right answer. Written as text replacements on
solutions/grpo_trainer.py or solutions/ppo_trainer.py, like the negative controls (tests/negative_controls/
__init__.py). This module's name does not end in `_controls`, so these are not taken for negative controls.
"""
from . import Control

GRPO = "grpo_trainer"
PPO = "ppo_trainer"

G_STEP = """                if log.skip_nonfinite(loss):
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
"""
P_STEP = """                if log.skip_nonfinite(loss):
                    continue
                if self.target_kl is not None and self.ppo_loss.metrics["approx_kl"] > 1.5 * self.target_kl:
                    stopped = True
                    break
                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
"""

ALTERNATIVES = [
    # ------------------------------------------------------------- GRPO
    Control("pi_old_from_a_fresh_forward", GRPO,
            (("        old_logprobs = outputs.logprobs\n",
              "        with torch.no_grad():\n"
              "            old_logprobs = self.policy_logprobs(self.model, prompts, outputs.completions)\n"),),
            "recomputes log pi_old with one no-grad forward pass before the update (the same numbers)"),
    Control("reference_in_two_micro_batches", GRPO,
            (("                ref_logprobs = self.policy_logprobs(self.ref_model, prompts, outputs.completions)\n",
              "                half = (prompts.shape[0] + 1) // 2\n"
              "                ref_logprobs = torch.cat([\n"
              "                    self.policy_logprobs(self.ref_model, prompts[:half], outputs.completions[:half]),\n"
              "                    self.policy_logprobs(self.ref_model, prompts[half:], outputs.completions[half:]),\n"
              "                ])\n"),),
            "runs the reference pass in two micro-batches, every row once, before any update"),
    Control("python_loops", GRPO,
            (("""        group_answers = answers.repeat_interleave(completions.shape[1], dim=0)
        rewards = self.task.reward(flatten_groups(completions), group_answers, kind=kind)
        return unflatten_groups(rewards, completions.shape[1])
""", """        rewards = torch.zeros(completions.shape[0], completions.shape[1])
        for b in range(completions.shape[0]):
            for g in range(completions.shape[1]):
                rewards[b, g] = self.task.reward(completions[b, g][None], answers[b][None], kind=kind)[0]
        return rewards
"""), ("""        group_size = completions.shape[1]
        row_prompts = prompts.repeat_interleave(group_size, dim=0)
        result = sequence_logprobs(model, row_prompts, flatten_groups(completions), temperature=self.temperature,
                                   with_entropy=with_entropy)
        if with_entropy:
            return tuple(unflatten_groups(part, group_size) for part in result)
        return unflatten_groups(result, group_size)
""", """        logprobs, entropies = [], []
        for i in range(completions.shape[0]):
            group_prompts = prompts[i:i + 1].expand(completions.shape[1], -1)
            result = sequence_logprobs(model, group_prompts, completions[i], temperature=self.temperature,
                                       with_entropy=True)
            logprobs.append(result[0])
            entropies.append(result[1])
        if with_entropy:
            return torch.stack(logprobs), torch.stack(entropies)
        return torch.stack(logprobs)
""")),
            "scores and computes log-probs group by group in Python loops"),
    Control("interleaved_minibatches", GRPO,
            (("for idx in order.chunk(self.num_minibatches):",
              "for idx in [order[i::self.num_minibatches] for i in range(self.num_minibatches)]:"),),
            "splits the shuffled groups into minibatches by striding, not by contiguous chunks"),
    Control("loss_with_positional_arguments", GRPO,
            (("loss = self.grpo_loss(logprobs, old_logprobs[idx], reference_logprobs=reference,\n"
              "                                      response_mask=minibatch.mask, advantages=advantages[idx])",
              "loss = self.grpo_loss(logprobs, old_logprobs[idx], None, reference, minibatch.mask,\n"
              "                                      advantages=advantages[idx])"),),
            "calls the loss with positional arguments"),
    Control("own_bookkeeping_and_nan_check_after_backward", GRPO,
            (("        log = StepMetrics()\n        for _ in range(self.num_iterations):",
              "        sums, steps, skipped = {}, 0, 0\n        for _ in range(self.num_iterations):"),
             (G_STEP, """                self.optimizer.zero_grad()
                loss.backward()
                if not torch.isfinite(loss):
                    skipped += 1
                    continue
"""),
             ("""                entropy = masked_mean(entropy.detach(), minibatch.mask)
                log.add(self.grpo_loss.metrics, grad_norm=grad_norm, entropy=entropy)
        return log.summary()
""", """                step = dict(self.grpo_loss.metrics, grad_norm=grad_norm.item(),
                            entropy=masked_mean(entropy.detach(), minibatch.mask).item())
                for key, value in step.items():
                    sums[key] = sums.get(key, 0.0) + value
                steps += 1
        averages = {key: value / steps for key, value in sums.items()} if steps else {"loss": None}
        return dict(averages, optimizer_steps=steps, nonfinite_losses=skipped)
""")),
            "averages the metrics by hand and checks the loss after backward (still never stepping on it)"),
    Control("dynamic_sampling_by_indices", GRPO,
            (("            prompts, rewards, outputs = prompts[informative], rewards[informative], "
              "select_rows(outputs, informative)\n",
              "            keep = informative.nonzero().squeeze(1)\n"
              "            prompts, rewards = prompts[keep], rewards[keep]\n"
              "            outputs = GroupOutputs(outputs.completions[keep], outputs.logprobs[keep], outputs.mask[keep])\n"),),
            "keeps the informative groups by their indices"),
    # ------------------------------------------------------------- PPO
    Control("ppo_loops_and_hand_whitening", PPO,
            (("""        mask = mask.to(old_logprobs.dtype)
        rewards = torch.zeros_like(old_logprobs)
        if ref_logprobs is not None and kl_beta != 0:
            rewards = -kl_beta * (old_logprobs - ref_logprobs) * mask
        lengths = mask.sum(dim=1).long()
        last = (lengths - 1).clamp(min=0)
        score_here = scores.to(rewards.dtype) * (lengths > 0).to(rewards.dtype)
        return rewards.scatter_add(1, last[:, None], score_here[:, None])
""", """        rewards = torch.zeros_like(old_logprobs)
        for i in range(mask.shape[0]):
            length = int(mask[i].sum())
            for t in range(length):
                if ref_logprobs is not None and kl_beta != 0:
                    rewards[i, t] = -kl_beta * (old_logprobs[i, t] - ref_logprobs[i, t])
            if length > 0:
                rewards[i, length - 1] += scores[i]
        return rewards
"""), ("        advantages = masked_whiten(advantages, mask) * mask\n",
       "        response = advantages[mask.bool()]\n"
       "        whitened = (advantages - response.mean()) / torch.sqrt(response.var() + 1e-8)\n"
       "        advantages = torch.where(mask.bool(), whitened, torch.zeros_like(whitened))\n")),
            "per-token rewards in Python loops; whitening by hand with torch's unbiased variance"),
    Control("ppo_pi_old_and_reference_recomputed", PPO,
            (("            values = values_for(self.critic, prompts, completions)\n            ref_logprobs = None\n",
              "            values = values_for(self.critic, prompts, completions)\n"
              "            old_logprobs = sequence_logprobs(self.actor, prompts, completions, "
              "temperature=self.temperature)\n"
              "            ref_logprobs = None\n"),
             ("                ref_logprobs = sequence_logprobs(self.ref_model, prompts, completions, "
              "temperature=self.temperature)\n",
              "                half = (prompts.shape[0] + 1) // 2\n"
              "                ref_logprobs = torch.cat([\n"
              "                    sequence_logprobs(self.ref_model, prompts[:half], completions[:half],\n"
              "                                      temperature=self.temperature),\n"
              "                    sequence_logprobs(self.ref_model, prompts[half:], completions[half:],\n"
              "                                      temperature=self.temperature)])\n")),
            "recomputes log pi_old in a no-grad pass and runs the reference in two micro-batches"),
    Control("ppo_early_stop_at_the_end_of_the_epoch", PPO,
            ((P_STEP, """                if log.skip_nonfinite(loss):
                    continue
                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
"""), ("            if stopped:\n                break\n",
       "            if self.target_kl is not None and self.ppo_loss.metrics[\"approx_kl\"] > 1.5 * self.target_kl:\n"
       "                stopped = True\n"
       "                break\n")),
            "checks the approximate KL once per epoch, after its steps (CleanRL's place for the check)"),
    Control("ppo_interleaved_minibatches", PPO,
            (("for idx in order.chunk(self.num_minibatches):",
              "for idx in [order[i::self.num_minibatches] for i in range(self.num_minibatches)]:"),),
            "splits the shuffled rows into minibatches by striding"),
]
