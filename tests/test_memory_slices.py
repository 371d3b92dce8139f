"""Memory-only slicing that must not change a number: the score-only RM scores a large batch in
calls of `policy_rl_rm.score_rows_per_call` rows (rows and their images sliced together), a key
checked by name like GRM judging's `judge_prompts_per_call`; DPO's
num_micro_batches is checked by name."""
import os
import sys

import numpy as np
import pytest
from flax import nnx

from grlhfv_jax import models, stages
from grlhfv_jax.config import ConfigError
from grlhfv_jax.stages import judging


def test_scoring_in_slices_gives_the_scores_of_one_call():
    import tiny_models as tm  # tests/ is on sys.path
    rm = models.from_config(tm.tiny_hf_config("qwen2_vl").to_dict(), rngs=nnx.Rngs(0), scalar_head=True)
    rows = [[[5, 6], (1, 2, 2), [7, 8, 9]], [[4, 4, 4]], [(1, 4, 2), [9]], [[3], (1, 2, 2), [11, 12]],
            [[8, 9, 10, 11]]]
    b = tm.make_batch(rows, pad_side="right")
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    whole = judging.score_batch(rm, batch, rows=8)            # 5 rows <= 8: one call
    assert whole.shape == (5,) and np.std(whole) > 0
    for rows in (2, 3):                                       # calls of 2, 2, 1 and of 3, 2 rows
        np.testing.assert_allclose(judging.score_batch(rm, batch, rows=rows), whole, rtol=1e-5, atol=1e-6)


def test_dpo_micro_batches_must_divide_the_pairs():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo
    c = demo.get_config("smoke")
    c.dpo.num_micro_batches = 3   # smoke: 2 pairs per step
    with pytest.raises(ConfigError, match=r"config\.dpo\.num_micro_batches = 3 must divide pairs_per_step = 2"):
        stages.validate(c)
    c.dpo.num_micro_batches = 2
    stages.validate(c)


@pytest.mark.parametrize("section,key", [("policy_rl", "judge_prompts_per_call"),
                                         ("policy_rl_rm", "score_rows_per_call")])
def test_judging_and_scoring_call_sizes_must_be_positive(section, key):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo
    c = demo.get_config("smoke")
    assert stages.validate(c)[section][key] == {"judge_prompts_per_call": 16, "score_rows_per_call": 320}[key]
    c[section][key] = 0
    with pytest.raises(ConfigError, match=rf"config\.{section}\.{key} = 0: must be an int >= 1"):
        stages.validate(c)
