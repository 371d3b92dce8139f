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

from grlhfv_jax import roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.data import sources
from grlhfv_jax.rl import grpo
from grlhfv_jax.stages import ConfigError, check_section
from grlhfv_jax.trainers import learner, loop, rewards
from grlhfv_jax.trainers.ppo_update import ActorCritic

POS_INT = (int, lambda v: v >= 1, "an int >= 1")
SCHEMA = {
    "steps": POS_INT, "prompts_per_step": POS_INT, "mini_batches": POS_INT, "n": POS_INT,
    "max_len": (int, lambda v: v >= 8, "an int >= 8 (prompt tokens)"), "max_new_tokens": POS_INT,
    "lr": ((int, float), lambda v: v > 0, "a positive number"),
    "critic_lr": ((int, float), lambda v: v > 0, "a positive number"),
    "kl_coef": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "clip_eps": ((int, float), lambda v: 0 < v < 1, "in (0, 1)"),
    "gamma": ((int, float), lambda v: 0 <= v <= 1, "in [0, 1]"), "lam": ((int, float), lambda v: 0 <= v <= 1, "in [0, 1]"),
    "value_clip": ((int, float), lambda v: v > 0, "a positive number"),
    "score_clip": ((int, float), lambda v: v > 0, "a positive number"),
    "kl_estimator": (str, lambda v: v in grpo.KL_ESTIMATORS, f"one of {sorted(grpo.KL_ESTIMATORS)}"),
    "policy_loss": (str, lambda v: v in grpo.POLICY_LOSSES, f"one of {sorted(grpo.POLICY_LOSSES)}"),
    "loss_agg_mode": (str, lambda v: v in grpo.LOSS_AGGREGATIONS, f"one of {sorted(grpo.LOSS_AGGREGATIONS)}"),
}


def validate(config, section: str) -> None:
    check_section(config, section, SCHEMA)
    sec = config[section]
    for key in ("mini_batches", "ref_num_micro_batches", "rollout_num_micro_batches"):
        if sec[key] < 1 or sec.prompts_per_step % sec[key]:
            raise ConfigError(f"config.{section}.{key} = {sec[key]} must divide the prompts per step "
                              f"({sec.prompts_per_step})")


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    policy, ref = roles.trainee_and_reference(config, workdir, "policy")
    rm, critic = roles.load_rm(workdir, config), roles.load_rm(workdir, config)   # the reward; the critic's start
    updates = int(sec.steps) * int(sec.mini_batches)
    critic_opt = dict(lr=sec.critic_lr, warmup_ratio=sec.warmup_ratio, weight_decay=sec.critic_weight_decay,
                      max_grad_norm=sec.max_grad_norm, freeze=sec.freeze)
    state = ActorCritic(loop.make_rl_train_state(policy, sec), loop.make_train_state(critic, critic_opt, updates))
    ds = src.dataset("policy_train", seed=config.seed + 11, batch_size=sec.prompts_per_step)

    def prompts_for_step(step):
        recs = ds[step]
        return recs, [codec.example(r["question"], r["image"]) for r in recs]

    def oracle(recs, texts):   # the data source's hidden principle, which the policy never sees
        return sources.oracle_scores(src.hooks, recs, texts, per_record=int(sec.n))

    step_fn = learner.ppo_step_fn(
        ref=ref, codec=codec, prompts_for_step=prompts_for_step, sec=sec,
        reward_fn=rewards.rm_reward(rm, pad_id=codec.pad_id, rows_per_call=int(sec.score_rows_per_call)),
        seed_for_step=lambda step: config.seed * 7919 + step, observers=[rewards.oracle_observer(oracle)])
    loop.train_loop(section, state, steps=sec.steps, make_batch=lambda s: s, step_fn=step_fn, writer=writer,
                    ckpt_dir=os.path.join(workdir, section, "ckpt"), log_every=int(sec.log_every),
                    ckpt_every=int(sec.ckpt_every))
    export_hf(state.policy, roles.output_dir(workdir, section), codec=codec)
    return {}
