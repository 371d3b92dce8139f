"""Stage `dpo`: Direct Preference Optimization of the policy on the human preference pairs (baseline).

The policy starts from the SFT policy (`workdir/sft/policy`), which is also the frozen reference;
each step takes `pairs_per_step` pairs of `grm_train` (image, question, the human-preferred and the
other answer) and applies the DPO loss (`rl/dpo.py`: "sigmoid" or "ipo", `beta`). No reward model
and no sampling. Writes `workdir/dpo/policy`; the `evaluate` stage scores it beside the others.
"""

from __future__ import annotations

import os

from grlhfv_jax import encoding, memory, roles
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.trainers import loop, steps


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    codec = roles.codec(config, workdir)
    policy, ref = roles.trainee_and_reference(config, workdir, "policy")
    state = loop.make_train_state(policy, sec, sec.steps)
    ds = src.dataset("grm_train", seed=config.seed + 5, batch_size=sec.pairs_per_step)
    cfg = steps.DPOConfig.from_section(sec)

    def make_batch(step):
        b = encoding.batch(encoding.pair_examples(codec, ds[step]), codec, side="right", max_len=sec.max_len)
        b.pop("valid")
        b = loop.micro_batch_images(ref, b, cfg.num_micro_batches)  # the tower per micro-batch
        jb = loop.place_batch(ref, b)
        b["ref_logps"] = steps.compute_sequence_logprobs(
            ref, jb, average=sec.loss_type == "ipo", num_micro_batches=int(sec.num_micro_batches)
        )
        return b

    last = loop.train_loop(
        section,
        state,
        steps=sec.steps,
        make_batch=make_batch,
        step_fn=lambda s, b: steps.dpo_step(s, b, cfg),
        writer=writer,
        ckpt_dir=os.path.join(workdir, "dpo", "ckpt"),
        log_every=int(sec.log_every),
        ckpt_every=int(sec.ckpt_every),
    )
    export_hf(state.model, roles.output_dir(workdir, "dpo"), codec=codec)
    return {f"dpo/train_{k}": v for k, v in last.items() if k in ("loss", "accuracy")}


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the policy trained and its frozen reference, one
    micro-batch of both responses of its pairs."""
    sec = config[section]
    policy = memory.Model("policy")
    rows = 2 * sec.pairs_per_step // sec.num_micro_batches
    phase = memory.Phase(
        f"train micro-batch: {rows} rows x {sec.max_len} tokens",
        policy,
        rows,
        sec.max_len,
        sec.max_len,
        backward=True,
        images=rows,
    )
    return [memory.Memory((policy, policy), policy, sec.freeze, (phase,))]
