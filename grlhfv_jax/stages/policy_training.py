"""Stage 2's training runs, shared by the stages that train the policy with RL (`policy_rl`,
`policy_rl_rm`, `policy_ppo_rm`) and by `nscale`, which repeats `policy_rl` for each n: the prompts
of a step and the oracle observer, and the GRPO run with either reward (a non-stage module, so no
stage imports another)."""

from __future__ import annotations

import os

from grlhfv_jax import roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.data import sources
from grlhfv_jax.trainers import learner, loop, rewards


def prompts_and_oracle(config, sec, src, codec):
    """(prompts_for_step, oracle observer) of a policy RL section: `prompts_per_step` policy_train
    records per step (data order by config.seed + 11) as prompt examples; the data source's oracle
    (the synthetic world's hidden principle, which the policy never sees) scores each step's samples."""
    ds = src.dataset("policy_train", seed=config.seed + 11, batch_size=sec.prompts_per_step)

    def prompts_for_step(step):
        recs = ds[step]
        return recs, [codec.example(r["question"], r["image"]) for r in recs]

    def oracle(recs, texts):
        return sources.oracle_scores(src.hooks, recs, texts, per_record=int(sec.n))

    return prompts_for_step, rewards.oracle_observer(oracle)


def train_grpo(config, workdir: str, writer, section: str, out_root: str | None = None) -> dict:
    """GRPO on the policy of `config.<section>` (a policy_rl section) with its reward: the judge's
    grouped comparisons (`reward="grm"`) or the score-only RM (`"rm"`); inputs from `workdir`,
    outputs under `out_root` (default: workdir)."""
    out_root = out_root or workdir
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    policy, ref = roles.trainee_and_reference(config, workdir, "policy")
    if sec.reward == "grm":  # the judge of config.<section>.judge; the stage calls the Judge protocol only
        judge = roles.make_judge(
            sec.judge,
            codec=codec,
            workdir=workdir,
            max_prompts=int(sec.judge_prompts_per_call),
            load_grm=lambda: roles.load_stage_output(
                sec.grm_path or roles.output_dir(workdir, "grm_rl"),
                f"run 'grm_rl' first or set config.{section}.grm_path",
                config,
                config.model.grm,
            ),
        )
        reward_fn = rewards.judge_reward(judge, sec, run_seed=int(config.seed))
    else:
        reward_fn = rewards.rm_reward(
            roles.load_rm(workdir, config), pad_id=codec.pad_id, rows_per_call=int(sec.score_rows_per_call)
        )
    prompts_for_step, oracle = prompts_and_oracle(config, sec, src, codec)
    state = loop.make_rl_train_state(policy, sec)
    step_fn = learner.grpo_step_fn(
        ref=ref,
        codec=codec,
        prompts_for_step=prompts_for_step,
        reward_fn=reward_fn,
        sec=sec,
        seed_for_step=lambda step: config.seed * 7919 + step,
        observers=[oracle],
    )
    learner.train(section, state, step_fn, sec, writer, os.path.join(out_root, section, "ckpt"))
    export_hf(state.model, roles.output_dir(out_root, section), codec=codec)
    return {}
