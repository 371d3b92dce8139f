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

from grlhfv_jax import memory, roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.stages import judging
from grlhfv_jax.trainers import learner, loop, rewards


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
        items = [
            (r["question"], r["image"], r["response_1"], r["response_2"], int(r["overall_response"])) for r in ds[step]
        ]
        if sec.position_debias:  # every pair also in the swapped order, label flipped
            items += [(q, img, b, a, grm_reward.swap_label(y)) for q, img, a, b, y in items]
        return items, [codec.grm_example(q, img, a, b) for q, img, a, b, _ in items]

    state = loop.make_rl_train_state(grm, sec)
    step_fn = learner.grpo_step_fn(
        ref=ref,
        codec=codec,
        prompts_for_step=prompts_for_step,
        sec=sec,
        reward_fn=rewards.grm_pair_reward(consistency=bool(sec.consistency_reward), pool_orders=bool(sec.pool_orders)),
        seed_for_step=lambda step: config.seed * 100003 + step,
    )

    def on_log(step):
        if step % sec.eval_every or not sec.eval_pairs or step == sec.steps:
            return {}
        m, _ = judging.grm_accuracy(
            judging.eval_judge(state.model, codec, sec),
            records_id[: max(8, sec.eval_pairs // 2)],
            max_new_tokens=sec.max_new_tokens,
            prefix="eval/",
        )
        return {"eval/accuracy_id": m["eval/accuracy"]}

    learner.train("grm_rl", state, step_fn, sec, writer, os.path.join(workdir, "grm_rl", "ckpt"), on_log=on_log)
    export_hf(state.model, roles.output_dir(workdir, "grm_rl"), codec=codec)
    if sec.eval_pairs:
        summary.update(
            judging.grm_after_rl(
                state.model, codec, sec, records_id, records_ood, workdir, encode_image=src.encode_image
            )
        )
        writer.write("grm_rl", sec.steps, {"eval/accuracy_id": summary["grm/accuracy_id"]})
    return summary


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the GRM trained and its frozen reference; each step
    samples group_size judgments of pairs_per_step pairs (twice with position_debias)."""
    sec = config[section]
    grm = memory.Model("grm")
    prompts = sec.pairs_per_step * (2 if sec.position_debias else 1)
    phases = memory.rl_phases(sec, grm, prompts, sec.group_size, sec.max_len + bucket_length(sec.max_new_tokens))
    return [memory.Memory((grm, grm), grm, sec.freeze, tuple(phases))]
