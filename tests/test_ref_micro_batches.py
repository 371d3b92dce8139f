"""The reference log-prob pass of a GRPO step in slices (GRPOConfig.ref_num_micro_batches, the
config key <grpo section>.ref_num_micro_batches): the same reference log-probs, so the same update,
as one pass over all rows (a slice count that does not divide the prompts: tests/test_rollout_chunks.py)."""

import jax
import numpy as np
from flax import nnx

from grlhfv_jax import models
from grlhfv_jax.rollout.engine import generate
from grlhfv_jax.trainers import grpo as learner
from grlhfv_jax.trainers import steps


def test_sliced_reference_pass_gives_the_same_reference_logprobs_and_update(monkeypatch):
    from tiny_models import tiny_hf_config  # tests/ is on sys.path

    hf = tiny_hf_config(
        "qwen2_vl",
        text=dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
    ).to_dict()
    ids = np.random.default_rng(0).integers(3, 90, (4, 6)).astype(np.int32)
    prompts = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    gen = generate(
        models.from_config(hf, rngs=nnx.Rngs(0)), prompts, max_new_tokens=4, num_samples=2, rng=jax.random.key(0)
    )
    rewards = np.random.default_rng(1).random((4, 2))
    seen, real = [], steps.compute_logprobs

    def recording(model, batch, **kw):
        out = real(model, batch, **kw)
        seen.append((kw["num_micro_batches"], np.asarray(out)))
        return out

    monkeypatch.setattr(steps, "compute_logprobs", recording)
    params = []
    for m in (1, 2, 4):
        model, ref = (models.from_config(hf, rngs=nnx.Rngs(0)) for _ in range(2))
        state = steps.TrainState(model, __import__("optax").sgd(0.1))
        learner.grpo_update(
            state,
            ref,
            prompts,
            gen,
            rewards,
            pad_id=0,
            mini_batches=1,
            cfg=steps.GRPOConfig(kl_coef=0.5, ref_num_micro_batches=m),
        )
        params.append(
            np.concatenate([np.ravel(np.asarray(v[...])) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))])
        )
    assert [m for m, _ in seen] == [1, 2, 4]
    assert np.abs(seen[0][1]).sum() > 0
    for _, lp in seen[1:]:
        np.testing.assert_allclose(lp, seen[0][1], rtol=1e-5, atol=1e-6)
    for p in params[1:]:
        np.testing.assert_allclose(p, params[0], rtol=1e-5, atol=1e-6)
