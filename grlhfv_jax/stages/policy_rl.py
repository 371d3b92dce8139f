"""Stage `policy_rl` (stage 2): GRPO on the policy with grouped-comparison rewards from the GRM.

For each prompt the policy samples n answers; the frozen GRM judges the pairs of complete
answers (`pairs`: "both" orders = n(n-1) judgments, "one" = C(n,2), "random"), and each answer's
reward is the aggregate (`aggregator`: "mean" = the paper's S(y_i), "win_rate", "bradley_terry")
of its scores. Truncated answers get 0 and are never compared; unparsed judgments are dropped and
counted. The same stage with `reward="rm"` (section `policy_rl_rm`) is the score-only baseline:
each complete answer's reward is the Bradley-Terry RM's score (an incomplete one: the group's
lowest minus 1, see `rl.grouped.rm_rewards`).

Every step also scores the samples with the data source's oracle hook when it has one (the
synthetic world's hidden principle), which the policy never sees: `oracle/mean` beside
`reward/mean` shows whether the judge is being fooled.
Reads `workdir/sft/policy` and the judge; writes `workdir/<section>/policy`.
"""

from __future__ import annotations

import os

from grlhfv_jax import roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.data import sources
from grlhfv_jax.rl import grouped
from grlhfv_jax.stages import ConfigError, check_section, grm_rl, judging
from grlhfv_jax.trainers import learner, loop, rewards

POS_INT = (int, lambda v: v >= 1, "an int >= 1")
SCHEMA = {
    "reward": (str, lambda v: v in ("grm", "rm"), "'grm' or 'rm'"),
    "steps": POS_INT, "prompts_per_step": POS_INT, "mini_batches": POS_INT,
    "n": (int, lambda v: v >= 2, "an int >= 2 (samples per prompt)"),
    "max_len": (int, lambda v: v >= 8, "an int >= 8 (prompt tokens)"),
    "max_new_tokens": POS_INT,
    "lr": ((int, float), lambda v: v > 0, "a positive number"),
    "temperature": ((int, float), lambda v: v > 0, "a positive number"),
    "kl_coef": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "clip_eps": ((int, float), lambda v: 0 < v < 1, "in (0, 1)"),
    "judge_prompts_per_call": POS_INT, "score_rows_per_call": POS_INT,
}


def validate(config, section: str) -> None:
    check_section(config, section, {**SCHEMA, **grm_rl.grpo_registry_schema()})
    sec = config[section]
    if sec.reward == "grm":
        check_section(config, section, {
            "pairs": (str, lambda v: v in ("both", "one", "random"), "'both', 'one' or 'random'"),
            "aggregator": (str, lambda v: v in grouped.AGGREGATORS, f"one of {sorted(grouped.AGGREGATORS)}"),
            "judge_max_new_tokens": POS_INT,
        })
        judging.check_judge_config(sec, section)
        if sec.pairs == "random" and int(sec.num_pairs or 0) < 1:
            raise ConfigError(f"config.{section}.num_pairs must be >= 1 when pairs = 'random'")
    if sec.prompts_per_step % sec.mini_batches:
        raise ConfigError(f"config.{section}.mini_batches = {sec.mini_batches} must divide "
                          f"prompts_per_step = {sec.prompts_per_step}")
    calls = sec.rollout_num_micro_batches
    if calls < 1 or sec.prompts_per_step % calls:
        raise ConfigError(f"config.{section}.rollout_num_micro_batches = {calls} must divide the prompts per step "
                          f"({sec.prompts_per_step})")


def run(config, workdir: str, writer, section: str, out_root: str | None = None) -> dict:
    """Trains; inputs from `workdir`, outputs under `out_root` (default: workdir)."""
    out_root = out_root or workdir
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    policy, ref = roles.trainee_and_reference(config, workdir, "policy")
    if sec.reward == "grm":   # the judge of config.<section>.judge; the stage calls the Judge protocol only
        judge = roles.make_judge(
            sec.get("judge"), codec=codec, workdir=workdir, max_prompts=int(sec.judge_prompts_per_call),
            load_grm=lambda: roles.load_stage_output(sec.grm_path or roles.output_dir(workdir, "grm_rl"),
                                                     f"run 'grm_rl' first or set config.{section}.grm_path",
                                                     config, config.model.grm))
        reward_fn = rewards.judge_reward(judge, sec)
    else:
        reward_fn = rewards.rm_reward(roles.load_rm(workdir, config), pad_id=codec.pad_id,
                                      rows_per_call=int(sec.score_rows_per_call))
    ds = src.dataset("policy_train", seed=config.seed + 11, batch_size=sec.prompts_per_step)

    def prompts_for_step(step):
        recs = ds[step]
        return recs, [codec.example(r["question"], r["image"]) for r in recs]

    def oracle(recs, texts):   # the data source's hidden principle, which the policy never sees
        return sources.oracle_scores(src.hooks, recs, texts, per_record=int(sec.n))

    state = loop.make_rl_train_state(policy, sec)
    step_fn = learner.grpo_step_fn(ref=ref, codec=codec, prompts_for_step=prompts_for_step, reward_fn=reward_fn,
                                   sec=sec, seed_for_step=lambda step: config.seed * 7919 + step,
                                   observers=[rewards.oracle_observer(oracle)])
    loop.train_loop(section, state, steps=sec.steps, make_batch=lambda s: s, step_fn=step_fn, writer=writer,
                    ckpt_dir=os.path.join(out_root, section, "ckpt"), log_every=int(sec.log_every),
                    ckpt_every=int(sec.ckpt_every))
    export_hf(state.model, roles.output_dir(out_root, section), codec=codec)
    return {}
