"""Stage 2 repeated for n in {2, 3, 5, 7} (the paper's near-linear gain with n), with the GRM and
with the score-only RM as reward, on the demo's world and models.

    python -m grlhfv_jax.main --config configs/demo_nscale.py --workdir /tmp/grlhfv_nscale

Runs the demo's data / sft / grm_rl / rm stages first (or reuses them: give the demo's workdir and
they are skipped only if the configs match, so use a fresh workdir), then `nscale`. Every n gets
the same number of prompts per step and steps: larger n costs more samples and judgments.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("grlhfv_demo_config", os.path.join(os.path.dirname(__file__), "demo.py"))
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def get_config(arg: str = ""):
    c = demo.get_config(arg)
    c.stages = ("data", "vision", "sft", "grm_rl", "rm", "nscale")
    c.nscale = dict(ns=[2, 3, 5, 7], rewards=["grm", "rm"], policy=dict(c.policy_rl.to_dict()))
    if arg == "smoke":
        c.nscale.ns = [2, 3]
    return c
