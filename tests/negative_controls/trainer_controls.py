"""Known-wrong versions of the trainer exercises: each must lose points in the graded tests.

Every control is a plausible student mistake, written as text replacements on solutions/grpo_trainer.py
or solutions/ppo_trainer.py (see tests/negative_controls/__init__.py). The trainers are graded with the
reference losses in place, so only the trainer's mistake is measured.
"""
from . import Control

GRPO = "grpo_trainer"
PPO = "ppo_trainer"

# ------------------------------------------------------------------------------ pieces of solutions/grpo_trainer.py
G_HELPER_CALL = """                logprobs, entropy = self.policy_logprobs(self.model, prompts[idx], minibatch.completions,
                                                       with_entropy=True)
"""
G_LOSS_CALL = """                loss = self.grpo_loss(logprobs, old_logprobs[idx], reference_logprobs=reference,
                                      response_mask=minibatch.mask, advantages=advantages[idx])
"""
G_STEP = """                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                self.optimizer.step()
"""
G_ORDER = "            order = torch.randperm(prompts.shape[0], generator=self.generator, device=prompts.device)\n"
G_REFERENCE = "                ref_logprobs = self.policy_logprobs(self.ref_model, prompts, outputs.completions)\n"
G_SAMPLE_SPLIT = """            rows = torch.randperm(prompts.shape[0] * self.group_size, generator=self.generator)
            for idx in rows.chunk(self.num_minibatches):
                def pick(x):
                    return None if x is None else unflatten_groups(flatten_groups(x)[idx], self.group_size)
                row_prompts = prompts.repeat_interleave(self.group_size, dim=0)[idx]
                flat_logprobs, flat_entropy = sequence_logprobs(
                    self.model, row_prompts, flatten_groups(outputs.completions)[idx],
                    temperature=self.temperature, with_entropy=True)
                logprobs = unflatten_groups(flat_logprobs, self.group_size)
                entropy = unflatten_groups(flat_entropy, self.group_size)
                minibatch = GroupOutputs(pick(outputs.completions), pick(outputs.logprobs), pick(outputs.mask))
                reference = pick(ref_logprobs)
                loss = self.grpo_loss(logprobs, pick(old_logprobs), reference_logprobs=reference,
                                      response_mask=minibatch.mask, advantages=pick(advantages))
"""

# ------------------------------------------------------------------------------ pieces of solutions/ppo_trainer.py
P_FORWARD = """                logprobs, entropy = sequence_logprobs(self.actor, prompts, completions, temperature=self.temperature,
                                                      with_entropy=True)
"""
P_STEP = """                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)
                self.actor_optimizer.step()
                self.critic_optimizer.step()
"""
P_ORDER = ("            order = torch.randperm(num_rows, generator=self.generator, "
           "device=experiences[\"completions\"].device)\n")
P_WHITEN = "        advantages = masked_whiten(advantages, mask) * mask\n"

CONTROLS = [
    # ------------------------------------------------------------- GRPO: rewards
    Control("answers_tiled", GRPO,
            (("group_answers = answers.repeat_interleave(completions.shape[1], dim=0)",
              "group_answers = answers.repeat(completions.shape[1], 1)"),),
            "tiles the answers (a0 a1 a0 a1 ...): sample g of prompt b is scored against another prompt's answer"),
    Control("reward_kind_ignored", GRPO,
            (("kind = kind or self.reward_kind", "kind = kind or \"exact\""),),
            "always uses the exact-match reward, whatever reward_kind says"),
    Control("solved_from_training_reward", GRPO,
            (("solved = self.compute_rewards(answers, outputs.completions, kind=\"exact\")", "solved = rewards"),),
            "reports the training reward (partial credit) as the exact-match rate"),
    # ------------------------------------------------------------- GRPO: log-probs
    Control("policy_logprobs_prompts_tiled", GRPO,
            (("row_prompts = prompts.repeat_interleave(group_size, dim=0)",
              "row_prompts = prompts.repeat(group_size, 1)"),),
            "reads sample g of group i after another prompt (prompts tiled, not repeated in a row)"),
    Control("temperature_dropped_in_update", GRPO,
            ((G_HELPER_CALL,
              "                logprobs, entropy = (unflatten_groups(part, self.group_size) for part in sequence_logprobs(\n"
              "                    self.model, prompts[idx].repeat_interleave(self.group_size, dim=0),\n"
              "                    flatten_groups(minibatch.completions), with_entropy=True))\n"),),
            "the update's forward pass runs at temperature 1 while the rollout sampled at self.temperature"),
    Control("temperature_dropped_in_reference", GRPO,
            ((G_REFERENCE,
              "                ref_logprobs = unflatten_groups(sequence_logprobs(\n"
              "                    self.ref_model, prompts.repeat_interleave(self.group_size, dim=0),\n"
              "                    flatten_groups(outputs.completions)), self.group_size)\n"),),
            "the reference pass runs at temperature 1"),
    # ------------------------------------------------------------- GRPO: advantages
    Control("advantages_as_rewards", GRPO,
            (("response_mask=minibatch.mask, advantages=advantages[idx])",
              "response_mask=minibatch.mask, rewards=advantages[idx])"),),
            "gives the advantages to the loss as rewards=, so the loss centres them again"),
    Control("advantages_not_from_compute_advantages", GRPO,
            (("advantages = self.compute_advantages(rewards, outputs)",
              "advantages = estimate_advantages(\"grpo\", rewards, outputs.mask)"),),
            "computes GRPO's advantages itself: the advantage_estimator (and a subclass's corrections) never apply"),
    Control("advantage_sign_flip", GRPO,
            (("advantages = self.compute_advantages(rewards, outputs)",
              "advantages = -self.compute_advantages(rewards, outputs)"),),
            "advantage = baseline - reward: pushes the worst samples up"),
    Control("advantages_not_indexed", GRPO,
            (("advantages=advantages[idx])", "advantages=advantages[: idx.numel()])"),),
            "gives every minibatch the first groups' advantages instead of its own"),
    # ------------------------------------------------------------- GRPO: old and reference log-probs
    Control("logpi_old_after_first_update", GRPO,
            (("loss = self.grpo_loss(logprobs, old_logprobs[idx], reference_logprobs=reference,",
              "loss = self.grpo_loss(logprobs, logprobs.detach(), reference_logprobs=reference,"),),
            "takes log pi_old from the current policy at each minibatch: the ratio is always 1, the clip never acts"),
    Control("logpi_old_recomputed_each_pass", GRPO,
            ((G_ORDER, G_ORDER + "            with torch.no_grad():\n"
                                 "                old_logprobs = self.policy_logprobs(self.model, prompts, "
                                 "outputs.completions)\n"),),
            "recomputes log pi_old at the start of every pass, after the previous pass's updates"),
    Control("old_logprobs_with_gradient", GRPO,
            (("        old_logprobs = outputs.logprobs\n",
              "        old_logprobs = self.policy_logprobs(self.model, prompts, outputs.completions)\n"),),
            "recomputes log pi_old with autograd on: the gradient flows through pi_old too"),
    Control("reference_called_when_kl_beta_zero", GRPO,
            (("        if self.kl_beta != 0:\n            with torch.no_grad():",
              "        if True:\n            with torch.no_grad():"),),
            "runs the reference model even when kl_beta == 0 (a wasted forward pass)"),
    Control("reference_with_autograd", GRPO,
            (("        if self.kl_beta != 0:\n            with torch.no_grad():",
              "        if self.kl_beta != 0:\n            if True:"),),
            "runs the reference pass with autograd on (memory and time for a graph nobody uses)"),
    Control("reference_per_minibatch", GRPO,
            ((G_REFERENCE, "                ref_logprobs = outputs.logprobs\n"),
             ("reference = None if ref_logprobs is None else ref_logprobs[idx]",
              "reference = None if ref_logprobs is None else self.policy_logprobs(\n"
              "                    self.ref_model, prompts[idx], minibatch.completions).detach()")),
            "runs the reference model again for every minibatch of every pass, after updates have started"),
    Control("dynamic_sampling_ignored", GRPO,
            (("        if self.dynamic_sampling:\n", "        if False:\n"),),
            "never drops the groups whose rewards are all equal"),
    Control("empty_batch_not_handled", GRPO,
            (("        if prompts.shape[0] == 0:\n            return dict(metrics, loss=None, optimizer_steps=0, "
              "nonfinite_losses=0)\n", ""),),
            "runs the update even when dynamic sampling left no group"),
    # ------------------------------------------------------------- GRPO: the update
    Control("groups_split_across_minibatches", GRPO,
            ((G_ORDER + "            for idx in order.chunk(self.num_minibatches):\n"
              "                minibatch = select_rows(outputs, idx)\n" + G_HELPER_CALL +
              "                reference = None if ref_logprobs is None else ref_logprobs[idx]\n" + G_LOSS_CALL,
              G_SAMPLE_SPLIT),),
            "shuffles the B*G samples, not the B groups: a minibatch 'group' mixes samples of different prompts"),
    Control("no_shuffle", GRPO,
            ((G_ORDER, "            order = torch.arange(prompts.shape[0], device=prompts.device)\n"),),
            "takes the groups in the same order at every pass"),
    Control("shuffle_without_generator", GRPO,
            (("torch.randperm(prompts.shape[0], generator=self.generator, device=prompts.device)",
              "torch.randperm(prompts.shape[0], device=prompts.device)"),),
            "shuffles with the global random stream: the trainer's seed no longer decides the minibatches"),
    Control("one_step_per_pass", GRPO,
            ((G_ORDER, G_ORDER + "            self.optimizer.zero_grad(set_to_none=True)\n"),
             (G_STEP, "                loss.backward()\n                grad_norm = torch.tensor(0.0)\n"),
             ("                log.add(self.grpo_loss.metrics, grad_norm=grad_norm, entropy=entropy)\n",
              "                log.add(self.grpo_loss.metrics, grad_norm=grad_norm, entropy=entropy)\n"
              "            self.optimizer.step()\n")),
            "accumulates the minibatches' gradients and takes one optimizer step per pass"),
    Control("num_iterations_ignored", GRPO,
            (("for _ in range(self.num_iterations):", "for _ in range(1):"),),
            "one pass over the batch whatever num_iterations says"),
    Control("no_minibatches", GRPO,
            (("for idx in order.chunk(self.num_minibatches):", "for idx in [order]:"),),
            "one optimizer step over the whole batch per pass: num_minibatches is ignored"),
    Control("missing_zero_grad", GRPO,
            (("                self.optimizer.zero_grad(set_to_none=True)\n", ""),),
            "never clears the gradients: every step applies the sum of all earlier minibatches' gradients"),
    Control("no_gradient_clipping", GRPO,
            (("grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)",
              "grad_norm = torch.tensor(0.0)"),),
            "ignores max_grad_norm"),
    Control("nan_loss_stepped_on", GRPO,
            (("                if log.skip_nonfinite(loss):\n                    continue\n", ""),),
            "steps on a NaN or inf loss: every weight becomes NaN"),
    Control("nan_not_counted", GRPO,
            (("if log.skip_nonfinite(loss):", "if not torch.isfinite(loss):"),),
            "skips a non-finite loss without counting it"),
    # ------------------------------------------------------------- PPO: rewards
    Control("score_on_first_token", PPO,
            (("last = (lengths - 1).clamp(min=0)", "last = torch.zeros_like(lengths)"),),
            "puts the task score on the first response token instead of the last"),
    Control("score_in_last_column", PPO,
            (("last = (lengths - 1).clamp(min=0)", "last = torch.full_like(lengths, mask.shape[1] - 1)"),),
            "puts the score in the last column, on padding for every row shorter than T"),
    Control("kl_penalty_sign_flip", PPO,
            (("rewards = -kl_beta * (old_logprobs - ref_logprobs) * mask",
              "rewards = kl_beta * (old_logprobs - ref_logprobs) * mask"),),
            "adds the KL to the reward instead of subtracting it: rewards drifting away from the reference"),
    Control("kl_penalty_on_padding", PPO,
            (("rewards = -kl_beta * (old_logprobs - ref_logprobs) * mask",
              "rewards = -kl_beta * (old_logprobs - ref_logprobs)"),),
            "charges the KL penalty on padding positions too"),
    # ------------------------------------------------------------- PPO: experiences
    Control("ppo_reference_called_when_kl_beta_zero", PPO,
            (("if self.kl_beta != 0:\n                ref_logprobs = sequence_logprobs(",
              "if True:\n                ref_logprobs = sequence_logprobs("),),
            "runs the reference model even when kl_beta == 0"),
    Control("ppo_reference_twice", PPO,
            (("if self.kl_beta != 0:\n                ref_logprobs = sequence_logprobs(",
              "if self.kl_beta != 0:\n                sequence_logprobs(self.ref_model, prompts, completions)\n"
              "                ref_logprobs = sequence_logprobs("),),
            "runs the reference model twice over the batch"),
    Control("experiences_with_autograd", PPO,
            (("with torch.no_grad():\n            values = values_for(self.critic, prompts, completions)",
              "if True:\n            values = values_for(self.critic, prompts, completions)"),),
            "collects the critic's values (and what follows) with autograd on"),
    Control("ppo_temperature_dropped_in_rollout", PPO,
            (("rollout = generate(self.actor, prompts, self.max_new_tokens, temperature=self.temperature,\n"
              "                           generator=self.generator)",
              "rollout = generate(self.actor, prompts, self.max_new_tokens, generator=self.generator)"),),
            "samples at temperature 1 whatever self.temperature says"),
    Control("ppo_temperature_dropped_in_reference", PPO,
            (("ref_logprobs = sequence_logprobs(self.ref_model, prompts, completions, temperature=self.temperature)",
              "ref_logprobs = sequence_logprobs(self.ref_model, prompts, completions)"),),
            "the reference pass runs at temperature 1"),
    # ------------------------------------------------------------- PPO: advantages
    Control("no_whitening", PPO,
            ((P_WHITEN, "        advantages = advantages * mask\n"),),
            "forgets to whiten the advantages"),
    Control("whitening_over_padding", PPO,
            ((P_WHITEN, "        advantages = masked_whiten(advantages, torch.ones_like(mask)) * mask\n"),),
            "whitens over every position, padding included"),
    Control("whitening_population_variance", PPO,
            ((P_WHITEN, "        advantages = masked_whiten(advantages, mask) * mask\n"
                        "        count = mask.sum()\n"
                        "        advantages = advantages * torch.sqrt(count / (count - 1))\n"),),
            "whitens with the population variance (divides by n) instead of the unbiased one"),
    Control("padding_advantage_not_zeroed", PPO,
            ((P_WHITEN, "        advantages = masked_whiten(advantages, mask)\n"),),
            "leaves whitened garbage on the padding positions"),
    Control("gae_default_gamma_lam", PPO,
            (("advantages, returns = compute_gae(rewards, values, self.gamma, self.lam, mask)",
              "advantages, returns = compute_gae(rewards, values, mask=mask)"),),
            "calls compute_gae without the trainer's gamma and lam (its defaults 0.99 / 0.95)"),
    Control("returns_from_whitened_advantages", PPO,
            (("        return advantages, returns\n", "        return advantages, advantages + values\n"),),
            "builds the critic's targets from the whitened advantages"),
    # ------------------------------------------------------------- PPO: the update
    Control("num_epochs_ignored", PPO,
            (("for _ in range(self.num_epochs):", "for _ in range(1):"),),
            "one pass over the experiences whatever num_epochs says"),
    Control("ppo_no_shuffle", PPO,
            ((P_ORDER, "            order = torch.arange(num_rows)\n"),),
            "takes the rows in the same order at every epoch"),
    Control("ppo_shuffle_without_generator", PPO,
            (("torch.randperm(num_rows, generator=self.generator, ", "torch.randperm(num_rows, "),),
            "shuffles with the global random stream"),
    Control("ppo_one_step_per_epoch", PPO,
            ((P_ORDER, P_ORDER + "            self.actor_optimizer.zero_grad(set_to_none=True)\n"
                                 "            self.critic_optimizer.zero_grad(set_to_none=True)\n"),
             (P_STEP, "                loss.backward()\n"),
             ("                log.add(self.ppo_loss.metrics)\n",
              "                log.add(self.ppo_loss.metrics)\n"
              "            self.actor_optimizer.step()\n            self.critic_optimizer.step()\n")),
            "accumulates the minibatches' gradients and steps once per epoch"),
    Control("ppo_missing_zero_grad", PPO,
            (("                self.actor_optimizer.zero_grad(set_to_none=True)\n", ""),),
            "never clears the actor's gradients"),
    Control("critic_not_stepped", PPO,
            (("                self.critic_optimizer.step()\n", ""),),
            "never steps the critic's optimizer: the value model never learns"),
    Control("critic_not_clipped", PPO,
            (("                torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.max_grad_norm)\n", ""),),
            "clips only the actor's gradient norm"),
    Control("values_detached", PPO,
            (("                values = values_for(self.critic, prompts, completions)\n",
              "                values = values_for(self.critic, prompts, completions).detach()\n"),),
            "gives the loss the critic's values without gradient: the critic never learns"),
    Control("ppo_temperature_dropped_in_update", PPO,
            ((P_FORWARD, "                logprobs, entropy = sequence_logprobs(self.actor, prompts, completions, "
                         "with_entropy=True)\n"),),
            "the update's forward pass runs at temperature 1 while the rollout sampled at self.temperature"),
    Control("old_logprobs_not_indexed", PPO,
            (("loss = self.ppo_loss(logprobs, minibatch[\"old_logprobs\"], values,",
              "loss = self.ppo_loss(logprobs, experiences[\"old_logprobs\"][: idx.numel()], values,"),),
            "takes the first rows of log pi_old instead of the minibatch's rows"),
    Control("old_values_not_passed", PPO,
            ((", entropy, mask, old_values=minibatch[\"values\"])", ", entropy, mask)"),),
            "never gives the loss old_values: value_clip cannot clip"),
    Control("old_values_are_returns", PPO,
            (("old_values=minibatch[\"values\"])", "old_values=minibatch[\"returns\"])"),),
            "clips the new values around the returns instead of the values at collection time"),
    Control("old_values_are_current_values", PPO,
            (("old_values=minibatch[\"values\"])", "old_values=values.detach())"),),
            "clips the new values around themselves: the value clip never acts"),
    Control("early_stop_ignored", PPO,
            (("if self.target_kl is not None and self.ppo_loss.metrics[\"approx_kl\"] > 1.5 * self.target_kl:",
              "if False:"),),
            "ignores target_kl"),
    Control("early_stop_only_ends_the_epoch", PPO,
            (("            if stopped:\n                break\n", ""),),
            "stops only the current epoch when the approximate KL is too large, then goes on"),
    Control("ppo_nan_stepped_on", PPO,
            (("                if log.skip_nonfinite(loss):\n                    continue\n", ""),),
            "steps on a NaN or inf loss"),
    Control("ppo_nan_not_counted", PPO,
            (("if log.skip_nonfinite(loss):", "if not torch.isfinite(loss):"),),
            "skips a non-finite loss without counting it"),
    Control("ppo_solved_from_scores", PPO,
            (("solved = self.task.reward(completions, batch.answers, kind=\"exact\")",
              "solved = experiences[\"scores\"]"),),
            "reports the training score (partial credit) as the exact-match rate"),
]
