"""A step's rollout in several sampler calls (`<RL section>.rollout_num_micro_batches`): the calls'
outputs joined in prompt order, and a call count (or reference-pass slice count) that does not
divide the prompts named. That k
calls draw what one call draws: tests/test_rollout_engine.py."""

import os
import sys

import numpy as np
import pytest

from grlhfv_jax import config as config_schema
from grlhfv_jax.config import ConfigError
from grlhfv_jax.rollout import GenerationOutput, group_sampling


def test_join_pads_to_the_widest_call_and_keeps_row_order():
    a = GenerationOutput(np.array([[7, 8]]), np.array([[-1.0, -2.0]]), np.array([2]), np.array([False]))
    b = GenerationOutput(
        np.array([[4, 5, 6], [9, 3, 3]]), np.full((2, 3), -0.5), np.array([3, 1]), np.array([False, True])
    )
    j = group_sampling.join_outputs([a, b], pad_id=3)
    np.testing.assert_array_equal(j.tokens, [[7, 8, 3], [4, 5, 6], [9, 3, 3]])
    np.testing.assert_array_equal(j.logprobs, [[-1, -2, 0], [-0.5, -0.5, -0.5], [-0.5, -0.5, -0.5]])
    np.testing.assert_array_equal(j.lengths, [2, 3, 1])
    np.testing.assert_array_equal(j.finished, [False, False, True])


@pytest.mark.parametrize("key", ["rollout_num_micro_batches", "ref_num_micro_batches"])
def test_a_slice_count_that_does_not_divide_the_prompts_is_named(key):
    """The RL sections' slice counts (sampler calls, reference-pass slices) must divide the prompts
    of a step; the error names the key and the prompt count."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo

    c = demo.get_config("smoke")
    c.grm_rl[key] = 3  # the demo: 16 pairs in both orders = 32 prompts
    with pytest.raises(ConfigError, match=rf"config\.grm_rl\.{key} = 3 must divide the prompts per step \(32\)"):
        config_schema.validate(c)
    c.grm_rl[key] = 2
    config_schema.validate(c)
    if key == "rollout_num_micro_batches":
        c = demo.get_config("smoke")
        bad = c.policy_rl.prompts_per_step + 1
        c.policy_rl[key] = bad
        with pytest.raises(ConfigError, match=rf"config\.policy_rl\.{key} = {bad} must divide"):
            config_schema.validate(c)
        c.policy_rl[key] = c.policy_rl.prompts_per_step
        config_schema.validate(c)
