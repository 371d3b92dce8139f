"""Reward functions for the learner (`trainers.learner.RewardFn`: (rollout, step) -> Rewards).

- `grm_pair_reward`: stage 1, the paper's reward for the GRM's judgments (1 when the boxed scores
  order the pair as the human did), optionally consistency across both orders and both orders
  pooled into one advantage group.
- `judge_reward`: stage 2, a `rollout.Judge` compares the pairs of each group's complete answers
  and an aggregator (`rl.grouped.AGGREGATORS`) turns the judgments into each answer's reward.
- `rm_reward`: the score-only baseline, the Bradley-Terry RM's score of each answer.
"""

from __future__ import annotations

import numpy as np

from grlhfv_jax import sharding
from grlhfv_jax.rl import grm_reward, grouped
from grlhfv_jax.rollout import SamplingParams
from grlhfv_jax.trainers import rows as row_layout
from grlhfv_jax.trainers.learner import Rewards, Rollout
from grlhfv_jax.trainers.scoring import score_batch


def grm_pair_reward(*, consistency: bool = False, pool_orders: bool = False):
    """Stage 1's reward. Rollout items: (question, image, response_1, response_2, label) with the
    last half of the rows the first half in the swapped order (label flipped) when `consistency` or
    `pool_orders` is on. `consistency`: a judgment scores 1 only when the k-th judgments of both
    orders are right (J1-style). `pool_orders`: each pair's 2G judgments (both orders) are one
    advantage group: per-order groups cannot move a judge that decides by position (right in one
    order, wrong in the other, every sample alike: zero spread, zero advantage)."""

    def reward(rollout: Rollout, step: int) -> Rewards:
        P, G = len(rollout.items), rollout.group
        labels = np.repeat([item[-1] for item in rollout.items], G)
        correct = np.array([grm_reward.pair_reward(t, y) for t, y in zip(rollout.texts, labels)]).reshape(P, G)
        values = correct
        if consistency:
            both = correct[: P // 2] * correct[P // 2 :]
            values = np.concatenate([both, both])
        groups = np.tile(np.arange(P // 2), 2) if pool_orders else None
        if pool_orders and P % 2:
            raise ValueError(f"grm_pair_reward: pool_orders needs both orders of every pair ({P} prompt rows)")
        metrics = {
            "judge/accuracy": float(correct.mean()),
            "judge/parse_failure": float(np.mean([grm_reward.pair_scores(t) is None for t in rollout.texts])),
        }
        metrics.update(grm_reward.judgment_stats(rollout.texts, G))  # position bias, ties, decision entropy
        return Rewards(values, groups, metrics)

    return reward


def judge_groups(judge, sec, recs, texts, complete, *, seed: int):
    """GRM rewards [P, n] and per-group judgments for P groups of n answers, from any
    `rollout.Judge` (one `judge_groups` call). `sec`: pairs, num_pairs, judge_max_new_tokens,
    judge_temperature, aggregator (a `policy_rl` section).

    texts: P*n answers (group p = rows p*n .. p*n+n-1); complete [P, n] bool."""
    P, n = complete.shape
    plans = [grouped.judging_plan(n, complete[p], sec.pairs, num_pairs=sec.num_pairs, seed=seed + p) for p in range(P)]
    groups = [
        (recs[p]["question"], recs[p]["image"], [(texts[p * n + i], texts[p * n + j]) for i, j in plans[p]])
        for p in range(P)
    ]
    params = SamplingParams(
        max_new_tokens=sec.judge_max_new_tokens, temperature=float(sec.judge_temperature), seed=seed
    )
    outs = [t for g in judge.judge_groups(groups, params) for t in g]
    rewards, all_judgments, k = np.zeros((P, n)), [], 0
    for p in range(P):
        judgments = {pair: grm_reward.pair_scores(t) for pair, t in zip(plans[p], outs[k : k + len(plans[p])])}
        k += len(plans[p])
        rewards[p] = grouped.aggregate(n, judgments, complete[p], sec.aggregator)
        all_judgments.append(judgments)
    return rewards, all_judgments


_POOLED = {
    "parse_failure_rate": ("num_unparsed", "num_judgments"),
    "tie_rate": ("num_ties", "num_parsed"),
    "position_consistency": ("num_consistent", "num_both_orders"),
    "cycle_rate": ("num_cycles", "num_triples"),
}


def judging_seed(run_seed: int, step: int) -> int:
    """The judging seed of RL step ``step`` in a run of ``config.seed`` = ``run_seed`` (an int in
    [0, 2**31)): drawn from both (numpy's SeedSequence), so runs of other seeds judge other random
    pairs (``pairs`` "random") and sample other judgments (``judge_temperature`` > 0), a resumed run
    the same ones; unrelated to the policy's sampling seed of the step. Greedy judging of every
    pair (the demo's and the paper configs' setting) does not read it."""
    return int(np.random.SeedSequence([int(run_seed) % 2**32, int(step), 2]).generate_state(1)[0] >> 1)


def judge_reward(judge, sec, run_seed: int):
    """Stage 2's reward: `judge_groups` with the step's `judging_seed`, plus the judge's
    diagnostics pooled over the step's groups (`rl.grouped.judge_diagnostics`)."""

    def reward(rollout: Rollout, step: int) -> Rewards:
        n, texts, complete = rollout.group, rollout.texts, rollout.complete
        seed = judging_seed(run_seed, step)
        values, judgments = judge_groups(judge, sec, rollout.items, texts, complete, seed=seed)
        diags = [
            grouped.judge_diagnostics(
                n,
                judgments[p],
                complete[p],
                rewards=values[p],
                lengths=[len(t.split()) for t in texts[p * n : (p + 1) * n]],
            )
            for p in range(len(rollout.items))
        ]
        metrics = {}
        for key, (a, b) in _POOLED.items():
            num, den = sum(d[a] for d in diags), sum(d[b] for d in diags)
            metrics[f"judge/{key}"] = num / den if den else float("nan")
        corrs = [d["reward_length_corr"] for d in diags if np.isfinite(d["reward_length_corr"])]
        metrics["judge/reward_length_corr"] = float(np.mean(corrs)) if corrs else float("nan")
        return Rewards(values, None, metrics)

    return reward


def rm_reward(rm, *, pad_id: int, rows_per_call: int):
    """The score-only baseline's reward: the RM scores the exact tokens the policy produced (prompt
    + response, EOS last), `rows_per_call` rows per scoring call; an incomplete answer gets the
    group's lowest complete score minus 1 (`rl.grouped.rm_rewards`)."""

    def reward(rollout: Rollout, step: int) -> Rewards:
        P, n = len(rollout.items), rollout.group
        base = {
            k: v
            for k, v in rollout.prompts.items()
            if k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        }
        rows = row_layout.repeat_rows(base, n, rm.image_layout)
        seqs = row_layout.training_rows(
            rows, np.asarray(rollout.gen.tokens), np.asarray(rollout.gen.lengths), pad_id=pad_id
        )
        seqs.pop("response_mask")
        scores = score_batch(rm, seqs, rows=int(rows_per_call)).reshape(P, n)
        return Rewards(grouped.rm_rewards(scores, rollout.complete), None, {})

    return reward


def oracle_observer(oracle_scores):
    """An observer logging how a hidden oracle scores the samples (`oracle_scores(items, texts)`:
    [P * G] or None), over every host's rows: `oracle/mean` beside `reward/mean` shows whether the
    reward is being gamed; `oracle/reward_corr` their correlation."""

    def observe(rollout: Rollout, rewards: Rewards) -> dict:
        oracle = oracle_scores(rollout.items, rollout.texts)
        if oracle is None:
            return {}
        oracle = sharding.gather_rows(np.asarray(oracle))
        values = sharding.gather_rows(np.asarray(rewards.values)).ravel()
        corr = float("nan") if np.std(oracle) == 0 or np.std(values) == 0 else float(np.corrcoef(oracle, values)[0, 1])
        return {"oracle/mean": float(oracle.mean()), "oracle/reward_corr": corr}

    return observe
