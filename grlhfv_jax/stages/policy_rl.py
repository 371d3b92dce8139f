"""Stage `policy_rl` (stage 2): GRPO on the policy with grouped-comparison rewards from the GRM.

For each prompt the policy samples n answers; the frozen GRM judges the pairs of complete
answers (`pairs`: "both" orders = n(n-1) judgments, "one" = C(n,2), "random"), and each answer's
reward is the aggregate (`aggregator`: "mean" = the paper's S(y_i), "win_rate", "bradley_terry")
of its scores. Truncated answers get 0 and are never compared; unparsed judgments are dropped and
counted. The same stage with `reward="rm"` (section `policy_rl_rm`) is the score-only baseline:
each complete answer's reward is the Bradley-Terry RM's score (an incomplete one: the group's
lowest minus 1, see `rm_rewards`).

Every step also scores the samples with the data source's oracle hook when it has one (the
synthetic world's hidden principle), which the policy never sees: `oracle/mean` beside
`reward/mean` shows whether the judge is being fooled.
Reads `workdir/sft/policy` and the judge; writes `workdir/<section>/policy`.
"""

from __future__ import annotations

import os
import time

import numpy as np

from grlhfv_jax import memory
from grlhfv_jax import sharding
from grlhfv_jax.checkpoint import export_hf
from grlhfv_jax.data import sources
from grlhfv_jax.rl import grm_reward, grouped
from grlhfv_jax.rollout import SamplingParams
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.stages import common, grm_rl, judging, rm, sft
from grlhfv_jax.stages import data as data_stage
from grlhfv_jax.trainers import grpo as learner
from grlhfv_jax.trainers import loop

def output_dir(workdir: str, section: str) -> str:
    return os.path.join(workdir, section, "policy")


def judge_groups(judge, sec, recs, texts, complete, *, seed: int):
    """GRM rewards [P, n] and per-group judgments for P groups of n answers, from any
    `rollout.Judge` (one `judge_groups` call).

    texts: P*n answers (group p = rows p*n .. p*n+n-1); complete [P, n] bool."""
    P, n = complete.shape
    plans = [grouped.judging_plan(n, complete[p], sec.pairs, num_pairs=sec.num_pairs, seed=seed + p)
             for p in range(P)]
    groups = [(recs[p]["question"], recs[p]["image"], [(texts[p * n + i], texts[p * n + j]) for i, j in plans[p]])
              for p in range(P)]
    params = SamplingParams(max_new_tokens=sec.judge_max_new_tokens, temperature=float(sec.judge_temperature),
                            seed=seed)
    outs = [t for g in judge.judge_groups(groups, params) for t in g]
    rewards, all_judgments, k = np.zeros((P, n)), [], 0
    for p in range(P):
        judgments = {pair: grm_reward.pair_scores(t) for pair, t in zip(plans[p], outs[k:k + len(plans[p])])}
        k += len(plans[p])
        rewards[p] = grouped.aggregate(n, judgments, complete[p], sec.aggregator)
        all_judgments.append(judgments)
    return rewards, all_judgments


def run(config, workdir: str, writer, section: str, out_root: str | None = None) -> dict:
    """Trains; inputs from `workdir`, outputs under `out_root` (default: workdir)."""
    out_root = out_root or workdir
    sec = config[section]
    src = data_stage.source(config, workdir)
    codec = common.codec(config, workdir)
    policy, ref = sft.trainee_and_reference(config, workdir, "policy")
    if sec.reward == "grm":   # the judge of config.<section>.judge; the stage calls the Judge protocol only
        judge = judging.make_judge(
            sec.get("judge"), codec=codec, workdir=workdir, max_prompts=int(sec.judge_prompts_per_call),
            load_grm=lambda: common.load_stage_output(sec.grm_path or grm_rl.output_dir(workdir),
                                                      f"run 'grm_rl' first or set config.{section}.grm_path",
                                                      config, config.model.grm))
    else:
        judge_model = rm.load(workdir, config)
    state = loop.make_rl_train_state(policy, sec)
    ds = src.dataset("policy_train", seed=config.seed + 11, batch_size=sec.prompts_per_step)
    cfg = grm_rl.grpo_config(sec)
    n = sec.n

    def step_fn(state, step):
        t0 = time.perf_counter()
        recs = ds[step]
        ex = [codec.example(r["question"], r["image"]) for r in recs]
        prompts, gen, texts = common.sample_groups(
            common.engine_rollout(state.model, codec), codec, ex, max_len=sec.max_len,
            params=SamplingParams(max_new_tokens=sec.max_new_tokens, temperature=float(sec.temperature),
                                  num_samples=n, seed=config.seed * 7919 + step),
            num_calls=int(sec.rollout_num_micro_batches))
        t1 = time.perf_counter()
        complete = np.asarray(gen.finished).reshape(len(recs), n)
        rewards = np.zeros((len(recs), n))
        diags = []
        if sec.reward == "grm":
            rewards, judgments = judge_groups(judge, sec, recs, texts, complete, seed=step * 1000)
            diags = [grouped.judge_diagnostics(n, judgments[p], complete[p], rewards=rewards[p],
                                               lengths=[len(t.split()) for t in texts[p * n:(p + 1) * n]])
                     for p in range(len(recs))]
        else:
            # The RM scores the exact tokens the policy produced (prompt + response, EOS last).
            base = {k: v for k, v in prompts.items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                             "image_grid_thw")}
            rows = learner.repeat_rows(base, n, image_token_id=judge_model.config.image_token_id,
                                        merge_size=judge_model.config.spatial_merge_size)
            seqs = learner.training_rows(rows, np.asarray(gen.tokens), np.asarray(gen.lengths), pad_id=codec.pad_id)
            seqs.pop("response_mask")
            scores = judging.score_batch(judge_model, seqs, rows=int(sec.score_rows_per_call)).reshape(len(recs), n)
            rewards = rm_rewards(scores, complete)
        t2 = time.perf_counter()
        oracle = sources.oracle_scores(src.hooks, recs, texts, per_record=n)
        metrics = learner.grpo_update(state, ref, prompts, gen, rewards, pad_id=codec.pad_id, cfg=cfg,
                                       mini_batches=sec.mini_batches)
        if oracle is not None:   # over every host's rows (one process: its own)
            oracle, all_rewards = sharding.gather_rows(np.asarray(oracle)), sharding.gather_rows(np.asarray(rewards))
            metrics["oracle/mean"] = float(oracle.mean())
            metrics["oracle/reward_corr"] = _corr(oracle, all_rewards.ravel())
        if diags:
            for key in ("parse_failure_rate", "tie_rate", "position_consistency", "cycle_rate"):
                num, den = _pool(diags, key)
                metrics[f"judge/{key}"] = num / den if den else float("nan")
            corrs = [d["reward_length_corr"] for d in diags if np.isfinite(d["reward_length_corr"])]
            metrics["judge/reward_length_corr"] = float(np.mean(corrs)) if corrs else float("nan")
        metrics.update({"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/step_s": time.perf_counter() - t0})
        return state, metrics

    loop.train_loop(section, state, steps=sec.steps, make_batch=lambda s: s, step_fn=step_fn, writer=writer,
                    ckpt_dir=os.path.join(out_root, section, "ckpt"), log_every=int(sec.log_every),
                    ckpt_every=int(sec.ckpt_every))
    export_hf(state.model, output_dir(out_root, section), codec=codec)
    return {}


def rm_rewards(scores: np.ndarray, complete: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Score-only RM rewards [P, n]: the RM's score for complete answers; an incomplete answer gets
    the group's lowest complete score minus `margin` (the worst, as 0 is for GRM scores 1..10).

    A fixed 0 would not do: RM scores are unbounded, and where complete answers score below 0 the
    policy learns never to finish (seen in the demo)."""
    scores, complete = np.asarray(scores, np.float64), np.asarray(complete, bool)
    low = np.where(complete, scores, np.inf).min(axis=1, keepdims=True) - margin
    low = np.where(np.isfinite(low), low, 0.0)  # no complete answer: all equal, no signal
    return np.where(complete, scores, low)


_POOL = {"parse_failure_rate": ("num_unparsed", "num_judgments"), "tie_rate": ("num_ties", "num_parsed"),
         "position_consistency": ("num_consistent", "num_both_orders"), "cycle_rate": ("num_cycles", "num_triples")}


def _pool(diags, key):
    a, b = _POOL[key]
    return sum(d[a] for d in diags), sum(d[b] for d in diags)


def _corr(x, y) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the policy trained and its frozen reference, n
    answers to each of prompts_per_step prompts, then the reward's own phase: the GRM judging up to
    judge_prompts_per_call groups' n(n-1) pairs per call (reward 'grm'), or the RM scoring
    score_rows_per_call answers per call (reward 'rm')."""
    sec = config[section]
    policy = memory.Model("policy")
    tokens = sec.max_len + bucket_length(sec.max_new_tokens)
    phases = memory.rl_phases(sec, policy, sec.prompts_per_step, sec.n, tokens)
    held, notes = [policy, policy], []
    if sec.reward == "grm":
        grm = memory.Model("grm")
        answers = 2 * sec.max_new_tokens + 64          # two answers and the template's tail
        prompt = sec.max_len + memory.GRM_TEMPLATE_TOKENS + answers
        groups = min(sec.prompts_per_step, sec.judge_prompts_per_call)   # judging.GRMJudge's max_prompts
        rows, cache = groups * sec.n * (sec.n - 1), prompt + bucket_length(sec.judge_max_new_tokens)
        held.append(grm)
        phases.append(memory.Phase(f"judging: {rows} pairs x {answers} new of {prompt} tokens + cache x {cache}", grm,
                                   rows, prompt, 1, queries=answers, images=groups, sampler=True, kv_rows=rows,
                                   kv_tokens=cache))
        notes.append(f"judge prompt estimated as {prompt} tokens = {section}.max_len + {memory.GRM_TEMPLATE_TOKENS} "
                     "template + two answers + 64")
    else:
        rm_model = memory.Model("rm" if "rm" in config.model else "grm", scalar=True)
        rows = min(sec.prompts_per_step * sec.n, sec.score_rows_per_call)   # judging.score_batch's rows
        held.append(rm_model)
        phases.append(memory.Phase(f"RM scoring: {rows} rows x {tokens} tokens", rm_model, rows, tokens, 0,
                                   images=rows))
    return [memory.Memory(tuple(held), policy, sec.freeze, tuple(phases), tuple(notes))]
