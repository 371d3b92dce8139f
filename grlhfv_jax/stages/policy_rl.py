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

from grlhfv_jax import memory
from grlhfv_jax.rollout.engine import bucket_length
from grlhfv_jax.stages import policy_training


def run(config, workdir: str, writer, section: str) -> dict:
    """Trains the policy (`policy_training.train_grpo`); writes `workdir/<section>/policy`."""
    return policy_training.train_grpo(config, workdir, writer, section)


def memory_phases(config, section: str) -> list[memory.Memory]:
    """What a step holds (the dry run prices it): the policy trained and its frozen reference, n
    answers to each of prompts_per_step prompts, then the reward's own phase: the GRM judging up to
    judge_prompts_per_call groups' n(n-1) pairs per call (reward 'grm', judge.kind 'grm'), or the RM
    scoring score_rows_per_call answers per call (reward 'rm'). With judge.kind 'http' the GRM runs
    on the server: this process holds no GRM and has no judging phase."""
    sec = config[section]
    policy = memory.Model("policy")
    tokens = sec.max_len + bucket_length(sec.max_new_tokens)
    phases = memory.rl_phases(sec, policy, sec.prompts_per_step, sec.n, tokens)
    held, notes = [policy, policy], []
    if sec.reward == "grm" and sec.judge.kind == "http":
        notes.append(
            f"judge over HTTP ({sec.judge.base_url}, model {sec.judge.model}): the GRM's memory is "
            "the server's, not priced here"
        )
    elif sec.reward == "grm":
        grm = memory.Model("grm")
        answers = 2 * sec.max_new_tokens + 64  # two answers and the template's tail
        prompt = sec.max_len + memory.GRM_TEMPLATE_TOKENS + answers
        groups = min(sec.prompts_per_step, sec.judge_prompts_per_call)  # rollout.grm_judge.GRMJudge's max_prompts
        rows, cache = groups * sec.n * (sec.n - 1), prompt + bucket_length(sec.judge_max_new_tokens)
        held.append(grm)
        phases.append(
            memory.Phase(
                f"judging: {rows} pairs x {answers} new of {prompt} tokens + cache x {cache}",
                grm,
                rows,
                prompt,
                1,
                queries=answers,
                images=groups,
                sampler=True,
                kv_rows=rows,
                kv_tokens=cache,
            )
        )
        notes.append(
            f"judge prompt estimated as {prompt} tokens = {section}.max_len + {memory.GRM_TEMPLATE_TOKENS} "
            "template + two answers + 64"
        )
    else:
        rm_model = memory.Model("rm" if "rm" in config.model else "grm", scalar=True)
        rows = min(sec.prompts_per_step * sec.n, sec.score_rows_per_call)  # trainers.scoring.score_batch's rows
        held.append(rm_model)
        phases.append(
            memory.Phase(f"RM scoring: {rows} rows x {tokens} tokens", rm_model, rows, tokens, 0, images=rows)
        )
    return [memory.Memory(tuple(held), policy, sec.freeze, tuple(phases), tuple(notes))]
