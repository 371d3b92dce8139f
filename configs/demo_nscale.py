"""Stage 2 repeated for n in {2, 3, 5, 7} (the paper's near-linear gain with n), with the GRM and
with the score-only RM as reward, on the demo's world and models.

    python -m grlhfv_jax.main --config configs/demo_nscale.py --workdir /tmp/grlhfv_nscale
    python -m grlhfv_jax.main --config configs/demo_nscale.py:aggregators --workdir /tmp/grlhfv_nscale_agg

Runs the demo's data / sft / grm_rl / rm stages first (or reuses them: give the demo's workdir and
they are skipped only if the configs match, so use a fresh workdir), then `nscale`. Every n gets
the same number of prompts per step and steps: larger n costs more samples and judgments.

`:aggregators` compares the grouped-comparison aggregators instead (the paper's Table 4: mean score,
Borda, instant runoff, ranked pairs, spectral ranking; and win rate, Bradley-Terry): the GRM reward
only, one run per aggregator and n, summary keys `nscale/grm_<aggregator>_gain_n<n>`. Arguments
combine with commas (`aggregators,smoke`: the short mode's counts).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("grlhfv_demo_config", os.path.join(os.path.dirname(__file__), "demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

AGGREGATORS = ["mean", "win_rate", "bradley_terry", "borda", "instant_runoff", "ranked_pairs", "spectral"]


def get_config(arg: str = ""):
    args = set(arg.split(",")) - {""}
    unknown = args - {"smoke", "aggregators"}
    if unknown:
        raise ValueError(f"configs/demo_nscale.py: unknown argument(s) {sorted(unknown)}; expected smoke, aggregators")
    smoke = "smoke" in args
    c = demo.get_config("smoke" if smoke else "")
    c.stages = ("data", "vision", "sft", "grm_rl", "rm", "nscale")
    c.nscale = dict(ns=[2, 3, 5, 7], rewards=["grm", "rm"], policy=dict(c.policy_rl.to_dict()))
    if "aggregators" in args:
        c.stages = ("data", "vision", "sft", "grm_rl", "nscale")
        c.nscale.update(rewards=["grm"], aggregators=list(AGGREGATORS))
    if smoke:
        c.nscale.ns = [2, 3]
    return c
