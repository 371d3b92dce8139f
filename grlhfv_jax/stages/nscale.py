"""Stage `nscale`: stage 2 repeated for several group sizes n (the paper's near-linear claim).

For each n in `ns` and each reward in `rewards` ("grm", "rm"), trains the SFT policy with
`policy_rl` settings (section `nscale.policy`, its `n` replaced) into `workdir/nscale/<reward>_n<n>`
and measures the oracle score on `policy_test` prompts: of `evaluate.samples` answers per prompt
sampled at temperature 1 when that is > 0 (the distribution RL optimises), else of greedy answers.
Writes `workdir/nscale.json` ({"<reward>": {"<n>": oracle gain over the SFT policy}}), which the
report plots.
"""

from __future__ import annotations

import json
import os

import ml_collections

from grlhfv_jax import roles, sharding, stages
from grlhfv_jax.data import sources
from grlhfv_jax.rollout import group_sampling
from grlhfv_jax.stages import ConfigError, check_section


def _section(config, section: str, reward: str, n: int) -> str:
    name = f"nscale_{reward}_n{n}"
    with config.unlocked():
        config[name] = ml_collections.ConfigDict(dict(config[section].policy.to_dict(), reward=reward, n=n))
    return name


def validate(config, section: str) -> None:
    check_section(config, section, {
        "ns": ((list, tuple), lambda v: len(v) > 0 and all(isinstance(n, int) and n >= 2 for n in v),
               "a non-empty list of ints >= 2"),
        "rewards": ((list, tuple), lambda v: len(v) > 0 and set(v) <= {"grm", "rm"}, "a list of 'grm' / 'rm'"),
    })
    if "policy" not in config[section]:
        raise ConfigError(f"config.{section}.policy is missing (policy_rl settings for each run)")
    probe = config.copy_and_resolve_references()
    stages.stage_module("policy_rl").validate(probe, _section(probe, section, config[section].rewards[0], config[section].ns[0]))


def _oracle(model, codec, recs, ev, seed: int, hooks) -> float:
    k = max(int(ev.samples), 1)
    texts, _ = group_sampling.answers(model, codec, recs, max_len=ev.max_len, max_new_tokens=ev.max_new_tokens,
                                      samples=k, temperature=1.0 if ev.samples else 0.0, seed=seed)
    return float(sources.oracle_scores(hooks, recs, texts, per_record=k).mean())


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    ev = config.evaluate
    src = roles.source(config, workdir)
    if src.hooks is None:
        raise ValueError("the 'nscale' stage measures gains with the data source's oracle, and this source has none")
    codec = roles.codec(config, workdir)
    recs = src.records("policy_test", n=ev.prompts)
    spec = config.model.policy
    seed = roles.EVAL_SAMPLE_SEED + config.seed
    base = _oracle(roles.load_stage_output(roles.output_dir(workdir, "sft", "policy"), "run sft", config, spec), codec, recs, ev,
                   seed, src.hooks)
    path = os.path.join(workdir, "nscale.json")
    result = json.load(open(path)) if os.path.exists(path) else {}
    summary = {"nscale/oracle_sft": base}
    for reward in sec.rewards:
        for n in sec.ns:
            if str(n) in result.get(reward, {}):
                continue  # done before a crash
            name = _section(config, section, reward, n)
            stages.stage_module("policy_rl").run(config, workdir, writer, section=name, out_root=os.path.join(workdir, "nscale"))
            model = roles.load_stage_output(roles.output_dir(os.path.join(workdir, "nscale"), name), name,
                                             config, spec)
            result.setdefault(reward, {})[str(n)] = _oracle(model, codec, recs, ev, seed, src.hooks) - base
            if sharding.is_writer():
                with open(path, "w") as f:
                    json.dump(result, f, indent=2)
            summary[f"nscale/{reward}_gain_n{n}"] = result[reward][str(n)]
            print(f"[nscale] {reward} n={n}: oracle gain {result[reward][str(n)]:+.3f}", flush=True)
    return summary
