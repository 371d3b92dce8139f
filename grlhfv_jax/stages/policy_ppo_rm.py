"""Stage `policy_ppo_rm`: the paper's PPO baseline, the policy trained with a critic on the
score-only Bradley-Terry RM (Table 2's "RM + PPO").

Each step the policy samples `n` answers per prompt; the RM scores each complete answer (an
incomplete one: the group's lowest score minus 1, `rl.grouped.rm_rewards`); the score, clipped to
+-score_clip, is the reward of the answer's last token and kl_coef x KL(policy || reference) is
subtracted on every token; the critic (initialised from the RM: its backbone and scalar head)
gives token values, GAE (gamma, lam) the advantages and returns; `mini_batches` clipped policy
updates and clipped value updates (value_clip) follow (`trainers.ppo_update`). Every step also
logs the data source's oracle score of the samples when it has one (`oracle/mean`).
Reads `workdir/sft/policy` and the RM; writes `workdir/policy_ppo_rm/policy`.
"""

from __future__ import annotations

import os

from grlhfv_jax import memory, roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.stages import policy_training
from grlhfv_jax.trainers import learner, loop, rewards
from grlhfv_jax.trainers.ppo_update import ActorCritic


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    policy, ref = roles.trainee_and_reference(config, workdir, "policy")
    rm, critic = roles.load_rm(workdir, config), roles.load_rm(workdir, config)  # the reward; the critic's start
    updates = int(sec.steps) * int(sec.mini_batches)
    critic_opt = sec.replace(lr=sec.critic_lr, weight_decay=sec.critic_weight_decay)  # the critic's optimizer
    state = ActorCritic(loop.make_rl_train_state(policy, sec), loop.make_train_state(critic, critic_opt, updates))
    prompts_for_step, oracle = policy_training.prompts_and_oracle(config, sec, src, codec)
    step_fn = learner.ppo_step_fn(
        ref=ref,
        codec=codec,
        prompts_for_step=prompts_for_step,
        sec=sec,
        reward_fn=rewards.rm_reward(rm, pad_id=codec.pad_id, rows_per_call=int(sec.score_rows_per_call)),
        seed_for_step=lambda step: config.seed * 7919 + step,
        observers=[oracle],
    )
    learner.train(section, state, step_fn, sec, writer, os.path.join(workdir, section, "ckpt"))
    export_hf(state.policy, roles.output_dir(workdir, section), codec=codec)
    return {}


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the policy and the critic trained, the frozen
    reference and RM; GRPO's phases (rollout, reference pass, a training micro-batch) plus the RM
    scoring up to score_rows_per_call answers per call and the critic's value pass and update, each
    over the rows of the reference pass / a micro-batch."""
    sec = config[section]
    policy = memory.Model("policy")
    rm_model = memory.Model("rm" if "rm" in config.model else "grm", scalar=True)
    tokens = sec.max_len + bucket_length(sec.max_new_tokens)
    phases = memory.rl_phases(sec, policy, sec.prompts_per_step, sec.n, tokens)
    rows = sec.prompts_per_step * sec.n
    score_rows = min(rows, sec.score_rows_per_call)
    ref_rows, micro = rows // sec.ref_num_micro_batches, rows // (sec.mini_batches * sec.num_micro_batches)
    phases += [
        memory.Phase(
            f"RM scoring: {score_rows} rows x {tokens} tokens", rm_model, score_rows, tokens, 0, images=score_rows
        ),
        memory.Phase(
            f"value pass: {ref_rows} rows x {tokens} tokens", rm_model, ref_rows, tokens, 0, images=ref_rows // sec.n
        ),
        memory.Phase(
            f"critic micro-batch: {micro} rows x {tokens} tokens",
            rm_model,
            micro,
            tokens,
            0,
            backward=True,
            images=micro // sec.n,
        ),
    ]
    return [
        memory.Memory((policy, policy, rm_model, rm_model), policy, sec.freeze, tuple(phases), also_trained=(rm_model,))
    ]
