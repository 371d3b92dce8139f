"""Stage `grm_rl` (stage 1): train the generative reward model with GRPO on the paper's reward.

For each preference pair the GRM writes `group_size` judgments (criteria, analysis, scores); a
judgment's reward is 1 when its boxed scores order the pair as the human did, else 0 (no box,
not two numbers, or a tie). Options (off = paper): `position_debias` also shows every pair in
the swapped order with the label flipped; `consistency_reward` gives 1 only when the k-th
judgments of both orders are right (J1-style; needs position_debias); `pool_orders` makes one
GRPO group of the 2 x group_size judgments of a pair's two orders (`pooled_order_advantages`).
Reads `workdir/sft/grm`, writes `workdir/grm_rl/grm`.
"""

from __future__ import annotations

import json
import time
import os

import numpy as np

from grlhfv_jax import memory
from grlhfv_jax import sharding
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout import SamplingParams
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.stages import common, judging, sft
from grlhfv_jax.stages import data as data_stage
from grlhfv_jax.trainers import grpo as learner
from grlhfv_jax.trainers import loop, steps

def grpo_config(sec) -> steps.GRPOConfig:
    """The GRPO loss of a validated RL section (steps.GRPOConfig.from_section)."""
    return steps.GRPOConfig.from_section(sec)


def pooled_order_advantages(rewards: np.ndarray, estimator: str) -> np.ndarray:
    """Advantages [2n, G] for rewards [2n, G] whose rows n.. are rows 0.. in the swapped order:
    each pair's 2G judgments (both orders) form one group.

    Per-order groups cannot move a judge that decides by position: it is right in one order and
    wrong in the other, every sample alike, so both groups have zero spread and zero advantage
    (measured: 70-90% of groups by step 65 of the demo). Pooled (GRPO, 4 + 4 judgments), the same
    judgments get +0.94 and -0.94.
    """
    n2, G = rewards.shape
    if n2 % 2:
        raise ValueError(f"pooled_order_advantages needs both orders of every pair: {n2} rows")
    n = n2 // 2
    pooled = np.concatenate([rewards[:n], rewards[n:]], axis=1)                     # [n, 2G]
    adv = learner.response_advantages(pooled, np.ones(n * 2 * G), estimator).reshape(n, 2 * G)
    return np.concatenate([adv[:, :G], adv[:, G:]], axis=0)


def output_dir(workdir: str) -> str:
    return os.path.join(workdir, "grm_rl", "grm")


def eval_judge(grm, codec, sec) -> judging.GRMJudge:
    """The GRM as a `rollout.Judge` for evaluation (weights as they are now)."""
    return judging.GRMJudge(grm, codec, rows=int(sec.eval_rows), max_len=int(sec.max_len))


def evaluate_grm(grm, codec, config, sec, records_id, records_ood, prefix: str) -> tuple[dict, list]:
    judge = eval_judge(grm, codec, sec)
    m_id, samples = judging.grm_accuracy(judge, records_id, max_new_tokens=sec.max_new_tokens,
                                         prefix=f"{prefix}_id_")
    m_ood, _ = judging.grm_accuracy(judge, records_ood, max_new_tokens=sec.max_new_tokens, prefix=f"{prefix}_ood_")
    return {**m_id, **m_ood}, samples


def save_samples(workdir: str, records, samples, encode_image, limit: int = 8) -> None:
    """Writes a few judgments (with their images) for the report (process 0 alone)."""
    if not sharding.is_writer():
        return
    out = os.path.join(workdir, "samples")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "judgments.jsonl"), "w") as f:
        for k, (r, s) in enumerate(zip(records[:limit], samples[:limit])):
            name = f"judgment_{k}.png"
            with open(os.path.join(out, name), "wb") as g:
                g.write(encode_image(r["image"]))
            f.write(json.dumps(dict(s, image=name)) + "\n")


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = data_stage.source(config, workdir)
    codec = common.codec(config, workdir)
    grm, ref = sft.trainee_and_reference(config, workdir, "grm")
    records_id = src.records("grm_test_id", n=sec.eval_pairs)
    records_ood = src.records("grm_test_ood", n=sec.eval_pairs)

    summary = {}
    done_before = _previous_summary(workdir, "grm/sft_accuracy_id")
    if done_before:  # resuming: the SFT model was evaluated before the interruption
        summary = done_before
    elif sec.eval_pairs:
        before, _ = evaluate_grm(grm, codec, config, sec, records_id, records_ood, "grm/sft")
        summary = _rename(before, "sft")
        if sharding.is_writer():
            os.makedirs(os.path.join(workdir, "grm_rl"), exist_ok=True)
            with open(os.path.join(workdir, "grm_rl", "sft_eval.json"), "w") as f:
                json.dump(summary, f)
        print(f"[grm_rl] before RL: {json.dumps({k: round(v, 3) for k, v in summary.items()})}", flush=True)

    state = loop.make_rl_train_state(grm, sec)
    ds = src.dataset("grm_train", seed=config.seed, batch_size=sec.pairs_per_step)
    cfg = grpo_config(sec)
    G = sec.group_size

    def step_fn(state, step):
        t0 = time.perf_counter()
        recs = ds[step]
        items = [(r["question"], r["image"], r["response_1"], r["response_2"], int(r["overall_response"]))
                 for r in recs]
        if sec.position_debias:
            items += [(q, img, b, a, grm_reward.swap_label(y)) for q, img, a, b, y in items]
        ex = [codec.grm_example(q, img, a, b) for q, img, a, b, _ in items]
        prompts, gen, texts = common.sample_groups(
            common.engine_rollout(state.model, codec), codec, ex, max_len=sec.max_len,
            params=SamplingParams(max_new_tokens=sec.max_new_tokens, temperature=float(sec.temperature),
                                  num_samples=G, seed=config.seed * 100003 + step),
            num_calls=int(sec.rollout_num_micro_batches))
        t1 = time.perf_counter()
        labels = np.repeat([y for *_, y in items], G)
        correct = np.array([grm_reward.pair_reward(t, y) for t, y in zip(texts, labels)]).reshape(len(items), G)
        rewards = correct
        if sec.consistency_reward:
            n = len(recs)
            both = correct[:n] * correct[n:]
            rewards = np.concatenate([both, both])
        adv = pooled_order_advantages(rewards, cfg.advantage_estimator) if sec.pool_orders else None
        t2 = time.perf_counter()
        metrics = learner.grpo_update(state, ref, prompts, gen, rewards, pad_id=codec.pad_id, cfg=cfg,
                                       mini_batches=sec.mini_batches, advantages=adv)
        if adv is not None:  # pairs whose pooled group carries no signal
            silent = np.all(adv.reshape(2, -1, G) == 0, axis=(0, 2))
            metrics["reward/frac_pooled_groups_zero_std"] = float(np.mean(silent))
        unparsed = np.mean([grm_reward.pair_scores(t) is None for t in texts])
        metrics.update({"judge/accuracy": float(correct.mean()), "judge/parse_failure": float(unparsed)})
        metrics.update(grm_reward.judgment_stats(texts, G))  # position bias, ties, per-group decision entropy
        metrics.update({"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/step_s": time.perf_counter() - t0})
        return state, metrics

    def on_log(step):
        if step % sec.eval_every or not sec.eval_pairs or step == sec.steps:
            return {}
        m, _ = judging.grm_accuracy(eval_judge(state.model, codec, sec), records_id[: max(8, sec.eval_pairs // 2)],
                                    max_new_tokens=sec.max_new_tokens, prefix="eval/")
        return {"eval/accuracy_id": m["eval/accuracy"]}

    loop.train_loop("grm_rl", state, steps=sec.steps, make_batch=lambda s: s, step_fn=step_fn, writer=writer,
                    ckpt_dir=os.path.join(workdir, "grm_rl", "ckpt"), log_every=int(sec.log_every),
                    ckpt_every=int(sec.ckpt_every), on_log=on_log)
    export_hf(state.model, output_dir(workdir), codec=codec)
    if sec.eval_pairs:
        after, samples = evaluate_grm(state.model, codec, config, sec, records_id, records_ood, "grm/rl")
        summary.update(_rename(after, "rl"))
        save_samples(workdir, records_id, samples, src.encode_image)
        writer.write("grm_rl", sec.steps, {"eval/accuracy_id": after["grm/rl_id_accuracy"]})
    return summary


def _previous_summary(workdir: str, key: str) -> dict:
    """The `grm/sft_*` figures of an interrupted run of this stage, if it logged them."""
    path = os.path.join(workdir, "grm_rl", "sft_eval.json")
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
        return found if key in found else {}
    return {}


def _rename(m: dict, tag: str) -> dict:
    """grm/<tag>_id_accuracy -> grm/accuracy_id (after RL) or grm/sft_accuracy_id (before)."""
    out = {}
    for k, v in m.items():
        split = "id" if f"{tag}_id_" in k else "ood"
        metric = k.split(f"{tag}_{split}_", 1)[1]
        key = f"grm/{metric}_{split}" if tag == "rl" else f"grm/sft_{metric}_{split}"
        out[key] = v
    return out


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the GRM trained and its frozen reference; each step
    samples group_size judgments of pairs_per_step pairs (twice with position_debias)."""
    sec = config[section]
    grm = memory.Model("grm")
    prompts = sec.pairs_per_step * (2 if sec.position_debias else 1)
    phases = memory.rl_phases(sec, grm, prompts, sec.group_size, sec.max_len + bucket_length(sec.max_new_tokens))
    return [memory.Memory((grm, grm), grm, sec.freeze, tuple(phases))]
