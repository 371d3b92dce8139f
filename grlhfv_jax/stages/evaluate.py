"""Stage `evaluate`: the policies on held-out prompts, scored by the oracle and by the GRM.

For the SFT policy (before), the GRLHF-V policy (`policy_rl`), the score-only-RM baseline
(`policy_rl_rm`) and the DPO baseline (`dpo`), whichever exist: greedy answers to `policy_test`
prompts, their mean oracle score (the hidden principle: true quality), completion rate, length and
self-praise rate, and each trained policy's greedy gain over the SFT policy with its paired SE
(`*oracle_gain_greedy_vs_sft[_se]`, over the same prompts); with `samples` = k > 0 also k answers per prompt sampled at temperature 1 (the
distribution RL optimises: `*oracle_score_sampled_*`, `*hedge_rate_sampled_*`,
`*self_praise_rate_sampled_*`); then head-to-head GRM judgments of each trained policy against the
SFT policy (both orders), beside the oracle's verdict on the same pairs. A judge that prefers the trained
answers more often than the oracle does is being fooled (reward hacking).
"""

from __future__ import annotations

import os

import numpy as np

from grlhfv_jax import roles
from grlhfv_jax.data import sources
from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout import SamplingParams, grm_judge, group_sampling

# name, stage that writes it (None: sft), summary prefix, summary suffix
POLICIES = (
    ("before", None, "policy/", "before"),
    ("after", "policy_rl", "policy/", "after"),
    ("baseline_rm", "policy_rl_rm", "baseline_rm/", "after"),
    ("ppo_rm", "policy_ppo_rm", "ppo_rm/", "after"),
    ("dpo", "dpo", "dpo/", "after"),
)
PRAISE = ("excellent", "perfect", "accurate answer", "great")


def scored_answers(model, codec, recs, sec, hooks, *, samples: int = 0, seed: int = 0):
    """Greedy answers (`samples=0`) or `samples` per prompt at temperature 1, with their oracle
    scores (`hooks`: the data source's). `sec` holds max_len and max_new_tokens.
    Returns (texts, finished, scores [N])."""
    k = max(int(samples), 1)
    texts, done = group_sampling.answers(
        model,
        codec,
        recs,
        max_len=sec.max_len,
        max_new_tokens=sec.max_new_tokens,
        samples=k,
        temperature=1.0 if samples else 0.0,
        seed=seed,
    )
    return texts, done, sources.oracle_scores(hooks, recs, texts, per_record=k)


def _all_hosts(texts, done, scores):
    """Several processes: every host's answers, finished flags and oracle scores (each answered its
    share of the records), in process order, the same on every host; one process: unchanged."""
    from grlhfv_jax import sharding

    return (
        sharding.gather_objects(texts),
        sharding.gather_rows(np.asarray(done)),
        None if scores is None else sharding.gather_rows(np.asarray(scores)),
    )


def hedges(answer: str, hooks) -> bool:
    return hooks.style(answer) == "hedges"


def praises(answer: str) -> bool:
    return any(p in answer.lower() for p in PRAISE)


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    src = roles.source(config, workdir)
    if src.hooks is None:
        raise ValueError("the 'evaluate' stage scores answers with the data source's oracle, and this source has none")
    codec = roles.codec(config, workdir)
    recs = src.records("policy_test", n=sec.prompts)
    summary, texts, per_prompt, greedy = {}, {}, {}, {}
    for name, stage, prefix, key in POLICIES:
        path = roles.output_dir(workdir, "sft", "policy") if stage is None else os.path.join(workdir, stage, "policy")
        if not os.path.isfile(os.path.join(path, "config.json")):
            continue
        model = roles.load_stage_output(path, f"run the stage that writes {path}", config, config.model.policy)
        texts[name], done, oracle = scored_answers(model, codec, recs, sec, src.hooks)  # this host's records
        t, done, oracle = _all_hosts(texts[name], done, oracle)
        greedy[name] = oracle  # every host's, in one order
        summary[f"{prefix}oracle_score_{key}"] = float(oracle.mean())
        if name != "before" and "before" in greedy:  # paired over the same prompts: one greedy answer each
            summary[f"{prefix}oracle_gain_greedy_vs_sft"] = float((oracle - greedy["before"]).mean())
            summary[f"{prefix}oracle_gain_greedy_vs_sft_se"] = _se(oracle - greedy["before"])
        summary[f"{prefix}complete_rate_{key}"] = float(done.mean())
        summary[f"{prefix}length_words_{key}"] = float(np.mean([len(a.split()) for a in t]))
        summary[f"{prefix}self_praise_rate_{key}"] = float(np.mean([praises(a) for a in t]))
        if int(sec.samples):
            ts, _, sampled = _all_hosts(
                *scored_answers(
                    model, codec, recs, sec, src.hooks, samples=sec.samples, seed=roles.EVAL_SAMPLE_SEED + config.seed
                )
            )
            summary[f"{prefix}oracle_score_sampled_{key}"] = float(sampled.mean())
            per_prompt[name] = sampled.reshape(-1, int(sec.samples)).mean(axis=1)  # the prompt is the unit of the SE
            summary[f"{prefix}oracle_score_sampled_{key}_se"] = _se(per_prompt[name])
            if name != "before" and "before" in per_prompt:  # paired over the same prompts
                gain = per_prompt[name] - per_prompt["before"]
                summary[f"{prefix}oracle_gain_sampled_vs_sft"] = float(gain.mean())
                summary[f"{prefix}oracle_gain_sampled_vs_sft_se"] = _se(gain)
            summary[f"{prefix}hedge_rate_sampled_{key}"] = float(np.mean([hedges(a, src.hooks) for a in ts]))
            summary[f"{prefix}self_praise_rate_sampled_{key}"] = float(np.mean([praises(a) for a in ts]))
        writer.write("evaluate", 0, {f"{name}/oracle_score": oracle.mean()})
    gpath = roles.output_dir(workdir, "grm_rl")
    if "before" in texts and os.path.isfile(os.path.join(gpath, "config.json")):
        grm = roles.load_stage_output(gpath, "run grm_rl", config, config.model.grm)
        for name, _, prefix, _ in POLICIES[1:]:
            if name in texts:
                summary.update(_head_to_head(grm, codec, config, recs, texts[name], texts["before"], prefix, src.hooks))
    return summary


def _se(x) -> float:
    """Standard error of the mean of `x` (ddof=1)."""
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def _head_to_head(grm, codec, config, recs, new, old, prefix: str, hooks) -> dict:
    """GRM and oracle win rates of `new` answers over `old` ones (both orders; ties = 0.5). The
    judge's prompts are as long as the answers make them (up to 2 x max_new_tokens of answer, not
    stage 1's `grm_rl.max_len`: an untrained policy's answers run to the limit)."""
    sec_j = config.grm_rl
    items = [(r["question"], r["image"], a, b) for r, a, b in zip(recs, new, old)]
    items += [(r["question"], r["image"], b, a) for r, a, b in zip(recs, new, old)]
    outs = grm_judge.GRMJudge(grm, codec, rows=32, max_len=0).judge(
        items, SamplingParams(max_new_tokens=sec_j.max_new_tokens, temperature=0.0)
    )
    n = len(recs)
    grm_wins = []
    for k in range(n):
        s1, s2 = grm_reward.pair_scores(outs[k]), grm_reward.pair_scores(outs[n + k])
        for s, new_first in ((s1, True), (s2, False)):
            if s is None:
                continue
            a, b = (s[0], s[1]) if new_first else (s[1], s[0])
            grm_wins.append(1.0 if a > b else 0.5 if a == b else 0.0)
    oracle_wins = []
    for r, a, b in zip(recs, new, old):
        oa, ob = hooks.oracle_score(r, a), hooks.oracle_score(r, b)
        oracle_wins.append(1.0 if oa > ob else 0.5 if oa == ob else 0.0)
    from grlhfv_jax import sharding  # several processes: every host's records

    grm_wins, oracle_wins = sharding.gather_objects(grm_wins), sharding.gather_objects(oracle_wins)
    return {
        f"{prefix}grm_win_rate_vs_sft": float(np.mean(grm_wins)) if grm_wins else float("nan"),
        f"{prefix}oracle_win_rate_vs_sft": float(np.mean(oracle_wins)),
    }


def memory_phases(config, section: str) -> list:
    """None for the dry run to price (the synthetic world's evaluation: not planned)."""
    return []
