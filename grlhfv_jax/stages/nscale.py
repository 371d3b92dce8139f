"""Stage `nscale`: stage 2 repeated for several group sizes n (the paper's near-linear claim).

For each n in `ns` and each run of the section (`config.sections.nscale_runs`: each reward in
`rewards`, "grm" and / or "rm"; with `aggregators` set, one "grm" run per aggregator, the paper's
Table 4 comparison), trains the SFT policy with `policy_rl` settings (section `nscale.policy`, its
reward, aggregator and `n` replaced) into `workdir/nscale/nscale_<label>_n<n>` (label: the reward, or
`grm_<aggregator>`) and measures the oracle score on `policy_test` prompts: of `evaluate.samples`
answers per prompt sampled at temperature 1 when that is > 0 (the distribution RL optimises), else
of greedy answers. Writes `workdir/nscale.json` ({"<label>": {"<n>": oracle gain over the SFT
policy}}), which the report plots, and the summary keys `nscale/<label>_gain_n<n>`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from grlhfv_jax import roles, sharding
from grlhfv_jax.config.sections import nscale_runs
from grlhfv_jax.data import sources
from grlhfv_jax.rollout import group_sampling
from grlhfv_jax.stages import policy_training


def _section(config, section: str, label: str, changes: dict, n: int):
    """(config with the run's section added, its name `nscale_<label>_n<n>`): config.<section>.policy
    with `changes` (reward, aggregator) and n replaced (config.sections' nscale rule validated every
    such section)."""
    name = f"nscale_{label}_n{n}"
    return config.replace(**{name: config[section].policy.replace(**changes, n=n)}), name


def _oracle(model, codec, recs, ev, seed: int, hooks) -> float:
    k = max(int(ev.samples), 1)
    texts, _ = group_sampling.answers(
        model,
        codec,
        recs,
        max_len=ev.max_len,
        max_new_tokens=ev.max_new_tokens,
        samples=k,
        temperature=1.0 if ev.samples else 0.0,
        seed=seed,
    )
    # every host's scores (`recs` is this host's share): the same gain on every host, as one process
    return float(sharding.gather_rows(np.asarray(sources.oracle_scores(hooks, recs, texts, per_record=k))).mean())


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
    base = _oracle(
        roles.load_stage_output(roles.output_dir(workdir, "sft", "policy"), "run sft", config, spec),
        codec,
        recs,
        ev,
        seed,
        src.hooks,
    )
    path = os.path.join(workdir, "nscale.json")
    result = json.load(open(path)) if os.path.exists(path) else {}
    summary = {"nscale/oracle_sft": base}
    for label, changes in nscale_runs(sec):
        for n in sec.ns:
            if str(n) not in result.get(label, {}):  # else done before a crash
                run_config, name = _section(config, section, label, changes, n)
                policy_training.train_grpo(
                    run_config, workdir, writer, section=name, out_root=os.path.join(workdir, "nscale")
                )
                model = roles.load_stage_output(
                    roles.output_dir(os.path.join(workdir, "nscale"), name), name, config, spec
                )
                result.setdefault(label, {})[str(n)] = _oracle(model, codec, recs, ev, seed, src.hooks) - base
                if sharding.is_writer():
                    with open(path, "w") as f:
                        json.dump(result, f, indent=2)
            summary[f"nscale/{label}_gain_n{n}"] = result[label][str(n)]
            print(f"[nscale] {label} n={n}: oracle gain {result[label][str(n)]:+.3f}", flush=True)
    return summary


def memory_phases(config, section: str) -> list:
    """None for the dry run to price (the synthetic world's stage-2 sweep: not planned)."""
    return []
