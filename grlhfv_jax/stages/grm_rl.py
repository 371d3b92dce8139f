"""Stage `grm_rl` (stage 1): train the generative reward model with GRPO on the paper's reward.

For each preference pair the GRM writes `group_size` judgments (criteria, analysis, scores); a
judgment's reward is 1 when its boxed scores order the pair as the human did, else 0 (no box,
not two numbers, or a tie). Options (off = paper): `position_debias` also shows every pair in
the swapped order with the label flipped; `consistency_reward` gives 1 only when the k-th
judgments of both orders are right (J1-style; needs position_debias); `pool_orders` makes one
GRPO group of the 2 x group_size judgments of a pair's two orders (`trainers.rewards.grm_pair_reward`).
Reads `workdir/sft/grm`, writes `workdir/grm_rl/grm`.
"""

from __future__ import annotations

import os

from grlhfv_jax import roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.rl import grm_reward, grpo
from grlhfv_jax.stages import ConfigError, check_section, judging
from grlhfv_jax.trainers import learner, loop, rewards

POS_INT = (int, lambda v: v >= 1, "an int >= 1")
POS_FLOAT = ((int, float), lambda v: v > 0, "a positive number")
SCHEMA = {
    "steps": POS_INT, "pairs_per_step": POS_INT, "mini_batches": POS_INT,
    "group_size": (int, lambda v: v >= 2, "an int >= 2 (GRPO needs a group)"),
    "max_len": (int, lambda v: v >= 16, "an int >= 16 (prompt tokens)"),
    "max_new_tokens": POS_INT, "lr": POS_FLOAT,
    "temperature": ((int, float), lambda v: v > 0, "a positive number (sampling)"),
    "kl_coef": ((int, float), lambda v: v >= 0, "a number >= 0"),
    "clip_eps": ((int, float), lambda v: 0 < v < 1, "in (0, 1)"),
    "eval_pairs": (int, lambda v: v >= 0, "an int >= 0"),
    "eval_every": POS_INT,
    "position_debias": (bool, None, "a bool"), "consistency_reward": (bool, None, "a bool"),
}


def _one_of(registry: dict):
    return (str, lambda v: v in registry, f"one of {sorted(registry)}")


def grpo_registry_schema() -> dict:
    """The GRPO keys that name a registry entry, checked against what is registered now."""
    return {"advantage_estimator": _one_of(grpo.ADVANTAGE_ESTIMATORS), "kl_estimator": _one_of(grpo.KL_ESTIMATORS),
            "loss_agg_mode": _one_of(grpo.LOSS_AGGREGATIONS), "policy_loss": _one_of(grpo.POLICY_LOSSES)}


def validate(config, section: str) -> None:
    check_section(config, section, {**SCHEMA, **grpo_registry_schema()})
    sec = config[section]
    for key in ("consistency_reward", "pool_orders"):
        if sec[key] and not sec.position_debias:
            raise ConfigError(f"config.{section}.{key} needs config.{section}.position_debias = True")
    per = sec.pairs_per_step * (2 if sec.position_debias else 1)
    for key in ("mini_batches", "ref_num_micro_batches", "rollout_num_micro_batches"):
        if sec[key] < 1 or per % sec[key]:
            raise ConfigError(f"config.{section}.{key} = {sec[key]} must divide the prompts per step ({per})")


grpo_config = learner.grpo_config   # the GRPO loss settings of a section (kept here for callers of grm_rl)


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    grm, ref = roles.trainee_and_reference(config, workdir, "grm")
    records_id = src.records("grm_test_id", n=sec.eval_pairs)
    records_ood = src.records("grm_test_ood", n=sec.eval_pairs)
    summary = judging.grm_before_rl(grm, codec, sec, records_id, records_ood, workdir)

    ds = src.dataset("grm_train", seed=config.seed, batch_size=sec.pairs_per_step)

    def prompts_for_step(step):
        items = [(r["question"], r["image"], r["response_1"], r["response_2"], int(r["overall_response"]))
                 for r in ds[step]]
        if sec.position_debias:   # every pair also in the swapped order, label flipped
            items += [(q, img, b, a, grm_reward.swap_label(y)) for q, img, a, b, y in items]
        return items, [codec.grm_example(q, img, a, b) for q, img, a, b, _ in items]

    state = loop.make_rl_train_state(grm, sec)
    step_fn = learner.grpo_step_fn(
        ref=ref, codec=codec, prompts_for_step=prompts_for_step, sec=sec,
        reward_fn=rewards.grm_pair_reward(consistency=bool(sec.consistency_reward), pool_orders=bool(sec.pool_orders)),
        seed_for_step=lambda step: config.seed * 100003 + step)

    def on_log(step):
        if step % sec.eval_every or not sec.eval_pairs or step == sec.steps:
            return {}
        m, _ = judging.grm_accuracy(judging.eval_judge(state.model, codec, sec), records_id[: max(8, sec.eval_pairs // 2)],
                                    max_new_tokens=sec.max_new_tokens, prefix="eval/")
        return {"eval/accuracy_id": m["eval/accuracy"]}

    loop.train_loop("grm_rl", state, steps=sec.steps, make_batch=lambda s: s, step_fn=step_fn, writer=writer,
                    ckpt_dir=os.path.join(workdir, "grm_rl", "ckpt"), log_every=int(sec.log_every),
                    ckpt_every=int(sec.ckpt_every), on_log=on_log)
    export_hf(state.model, roles.output_dir(workdir, "grm_rl"), codec=codec)
    if sec.eval_pairs:
        summary.update(judging.grm_after_rl(state.model, codec, sec, records_id, records_ood, workdir,
                                            encode_image=src.encode_image))
        writer.write("grm_rl", sec.steps, {"eval/accuracy_id": summary["grm/accuracy_id"]})
    return summary
