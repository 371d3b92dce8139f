"""Pixel rows padded to a few bucketed sizes (`processing.patch_bucket`, `trainers.loop.place_batch`):
batches of images of other sizes share one compiled train step, and the padding changes nothing."""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from grlhfv_jax import models, processing  # noqa: E402
from grlhfv_jax.trainers import loop, steps  # noqa: E402


@pytest.mark.parametrize(
    "n, unit, want",
    [
        (1, 16, 16),
        (16, 16, 16),
        (17, 16, 32),
        (33, 16, 48),
        (48, 16, 48),
        (49, 16, 64),
        (65, 16, 96),
        (97, 16, 128),
        (129, 16, 192),
        (1000, 64, 1024),
        (1025, 64, 1536),
    ],
)
def test_patch_bucket_series(n, unit, want):
    """Units of 1, 2, 3, 4, 6, 8, 12, 16, ...: at most 1.5x the patches past two units."""
    assert processing.patch_bucket(n, unit) == want


def test_padded_pixel_rows_share_a_compiled_step_and_change_nothing():
    """Two batches whose images differ in size (40 and 48 patches in all) both pad to 48 in
    `place_batch` (unit 48 = the model's vision block), so `compute_logprobs` compiles once for
    both; their log-probs equal those of the unpadded batches."""
    cfg = tm.tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    cfg["vision_config"]["depth"] = 1
    model = models.from_config(cfg, rngs=nnx.Rngs(0), vision_block=48)
    assert loop.patch_unit(model) == 48
    rng = np.random.default_rng(0)
    batches = [
        tm.make_batch(
            [
                [list(rng.integers(3, 99, 3)), grid, list(rng.integers(3, 99, 4))],
                [list(rng.integers(3, 99, 2)), (1, 2, 4), list(rng.integers(3, 99, 5))],
            ],
            pad_side="right",
            seed=k,
        )
        for k, grid in enumerate([(1, 4, 8), (1, 4, 10)])
    ]
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    widths = set()
    for b in batches:
        b = {k: b[k] for k in keys}
        assert b["pixel_values"].shape[0] in (40, 48)
        placed = loop.place_batch(model, b)
        widths.add(placed["pixel_values"].shape[0])
        got = np.asarray(steps.compute_logprobs(model, placed))
        want = np.asarray(steps.compute_logprobs(model, {k: jnp.asarray(v) for k, v in b.items()}))
        np.testing.assert_allclose(got, want, atol=1e-5)
        real = b["attention_mask"][:, 1:].astype(bool)
        assert np.isfinite(got).all() and (got[:, 1:][real] < 0).all()
    assert widths == {48}
    with pytest.raises(ValueError, match="50 patches > total 48"):
        processing.pad_patches({"pixel_values": np.zeros((50, 4))}, 48)
