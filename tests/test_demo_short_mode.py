"""configs/demo.py's short mode (what CI, the resume test and the notebook test run) differs from the
README's full demo only in counts: steps, the world's sizes, the evaluations' sizes, how often it logs,
evaluates and checkpoints. Every per-step shape is the full run's (issue 27: a short mode with n = 2
and 2 prompts per step hid the full run's stage-2 crash at n = 5)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

from grlhfv_jax import config as config_schema  # noqa: E402

# the keys the short mode may change: counts, never shapes
COUNTS = {"steps", "log_every", "ckpt_every", "eval_every", "eval_pairs", "eval_images", "prompts"}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_short_mode_changes_only_counts():
    full, short = _flat(demo.get_config("").to_dict()), _flat(demo.get_config("smoke").to_dict())
    added = set(short) - set(full)  # keys the full config leaves at the schema's default
    assert set(full) <= set(short) and all(k.rsplit(".", 1)[-1] in COUNTS for k in added), added
    changed = {k for k in full if full[k] != short[k]} | added
    shapes = sorted(k for k in changed if k.rsplit(".", 1)[-1] not in COUNTS and not k.startswith("data.sizes."))
    assert shapes == [], f"the short mode changes per-step shapes: {[(k, full.get(k), short[k]) for k in shapes]}"
    # it does cut: every stage's steps, the world, the evaluations
    for k in (
        "vision.steps",
        "sft.policy.steps",
        "sft.grm.steps",
        "grm_rl.steps",
        "rm.steps",
        "policy_rl.steps",
        "policy_rl_rm.steps",
        "dpo.steps",
    ):
        assert short[k] <= 2 < full[k], k
    assert all(short[k] <= 300 for k in short if k.startswith("data.sizes."))
    assert short["evaluate.prompts"] < full["evaluate.prompts"]


def test_the_short_world_trains_the_full_worlds_tokenizer():
    """The demo tokenizer reads at most 300 records of each split: the short world's 300 give the
    same training texts, so every row tokenizes as in the full run and fits its max lengths."""
    from grlhfv_jax import roles
    from grlhfv_jax.data import pipeline

    texts = [
        pipeline.tokenizer_texts(roles.world_config(config_schema.validate(demo.get_config(a)))) for a in ("", "smoke")
    ]
    assert texts[0] == texts[1]


def test_each_roles_model_is_its_own():
    """An override of one role's model changes that role only (the roles once shared one hf_config
    ConfigDict: `--config.model.grm.hf_config.vision_config.depth=3` changed the policy and RM too)."""
    for arg in ("", "smoke"):
        c = demo.get_config(arg)
        c.model.grm.hf_config.vision_config.depth = 3
        assert c.model.policy.hf_config.vision_config.depth == c.model.rm.hf_config.vision_config.depth == 2
