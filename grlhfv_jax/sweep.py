"""Aggregates finished runs (a seed sweep, a perturbed arithmetic) into mean and spread.

    python -m grlhfv_jax.sweep --out DIR RUN_DIR [RUN_DIR ...]

Reads each RUN_DIR/summary.json and writes DIR/summary.json: for every numeric key present in all
runs its mean under the key, the standard deviation over runs (ddof=1) under `key/std`, the
smallest and largest under `key/min` and `key/max`; DIR/runs.json (each run's figures) and
DIR/report.html (the headline table with the spreads). Prints the headline keys as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

HEADLINE = (
    "grm/sft_accuracy_id",
    "grm/sft_accuracy_ood",
    "grm/accuracy_id",
    "grm/accuracy_ood",
    "grm/position_consistency_id",
    "grm/position_consistency_ood",
    "grm/accuracy_style_id",
    "baseline_rm/accuracy_id",
    "baseline_rm/accuracy_ood",
    "policy/oracle_score_sampled_before",
    "policy/oracle_score_sampled_after",
    "policy/oracle_gain_sampled_vs_sft",
    "baseline_rm/oracle_gain_sampled_vs_sft",
    "ppo_rm/oracle_gain_sampled_vs_sft",
    "dpo/oracle_gain_sampled_vs_sft",
    "policy/hedge_rate_sampled_after",
    "policy/self_praise_rate_sampled_after",
    "policy/oracle_score_after",
)


def aggregate(summaries: list[dict]) -> dict:
    """Mean, std (ddof=1), min and max over runs of every numeric key all runs hold."""
    keys = set.intersection(*(set(s) for s in summaries))
    out = {}
    for k in sorted(keys):
        vals = [s[k] for s in summaries]
        if not all(isinstance(v, (int, float)) for v in vals) or any(isinstance(v, bool) for v in vals):
            continue
        x = np.asarray(vals, np.float64)
        if np.any(np.isnan(x)):
            continue
        out[k] = float(x.mean())
        out[f"{k}/std"] = float(x.std(ddof=1)) if x.size > 1 else math.nan
        out[f"{k}/min"], out[f"{k}/max"] = float(x.min()), float(x.max())
    out["sweep/runs"] = len(summaries)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    summaries = []
    for run in args.runs:
        path = os.path.join(run, "summary.json")
        if not os.path.isfile(path):
            raise SystemExit(f"{path} is missing: is {run} a finished run?")
        with open(path) as f:
            summaries.append(json.load(f))
    agg = aggregate(summaries)
    os.makedirs(args.out, exist_ok=True)
    from grlhfv_jax.metrics import write_json_atomic
    from grlhfv_jax.report import write_report

    write_json_atomic(os.path.join(args.out, "summary.json"), agg)
    write_json_atomic(os.path.join(args.out, "runs.json"), dict(zip(args.runs, summaries)))
    write_report(args.out)
    head = {
        k: [round(agg[k], 4), round(agg[f"{k}/std"], 4), round(agg[f"{k}/min"], 4), round(agg[f"{k}/max"], 4)]
        for k in HEADLINE
        if k in agg
    }
    print(json.dumps({"runs": len(summaries), "mean_std_min_max": head}, indent=1))
    return agg


if __name__ == "__main__":
    main()
