"""Images split by micro-batch (`trainers.loop.micro_batch_images`): each micro-batch of a train step
runs the vision tower on its own images. The split by hand; the steps' values with it are checked
against the whole-batch layout in test_shared_prompt.py (GRPO, group) and test_trainers_steps.py
(DPO, BT RM); here also the tower's memory of a step, which must fall with the micro-batch."""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from grlhfv_jax import models, processing  # noqa: E402
from grlhfv_jax.trainers import loop, steps  # noqa: E402


def _model(**kw):
    cfg = tm.tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    cfg["vision_config"]["depth"] = 1
    return models.from_config(cfg, rngs=nnx.Rngs(0), **kw)


def test_the_split_by_hand():
    """4 rows, 2 micro-batches: row 0 image A (8 patches), row 1 none, row 2 images B (4) and C (16),
    row 3 image D (4). Micro-batch 0 holds A, micro-batch 1 B, C, D, each zero-padded to the bucket
    of the largest (24 patches in units of 8: 24) and to 3 grid rows; with group 2 (rows 0-1, 2-3
    share their prompt) only rows 0 and 2 keep theirs."""
    rows = [[[5], (1, 2, 4), [6]], [[5, 6, 7, 8]], [(1, 2, 2), (1, 4, 4), [9]], [[5], (1, 2, 2), [7]]]
    b = tm.make_batch(rows, pad_side="right")
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    pv = batch["pixel_values"]
    A, B, C, D = pv[0:8], pv[8:12], pv[12:28], pv[28:32]
    model = _model(vision_block=8)
    assert loop.patch_unit(model) == 8

    out = loop.micro_batch_images(model, batch, 2)
    assert "pixel_values" not in out and out["image_grid_thw"] is batch["image_grid_thw"]  # positions: all
    mpv, mgrid = out["micro_pixel_values"], out["micro_image_grid_thw"]
    assert mpv.shape == (2, 24, pv.shape[1]) and mgrid.shape == (2, 3, 3)
    np.testing.assert_array_equal(mpv[0, :8], A)
    np.testing.assert_array_equal(mpv[0, 8:], 0.0)
    np.testing.assert_array_equal(mpv[1], np.concatenate([B, C, D]))
    np.testing.assert_array_equal(mgrid[0], [[1, 2, 4], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mgrid[1], [[1, 2, 2], [1, 4, 4], [1, 2, 2]])

    out = loop.micro_batch_images(model, batch, 2, group=2)  # each run's first row: A | B, C
    mpv, mgrid = out["micro_pixel_values"], out["micro_image_grid_thw"]
    assert mpv.shape == (2, processing.patch_bucket(20, 8), pv.shape[1]) and mgrid.shape == (2, 2, 3)
    np.testing.assert_array_equal(mpv[0, :8], A)
    np.testing.assert_array_equal(mpv[1, :20], np.concatenate([B, C]))
    np.testing.assert_array_equal(mpv[1, 20:], 0.0)
    np.testing.assert_array_equal(mgrid, [[[1, 2, 4], [0, 0, 0]], [[1, 2, 2], [1, 4, 4]]])

    out = loop.micro_batch_images(model, batch, 4)  # one row each; row 1's micro-batch: padding only
    np.testing.assert_array_equal(out["micro_pixel_values"][1], 0.0)
    np.testing.assert_array_equal(out["micro_image_grid_thw"][1], 0)
    assert loop.micro_batch_images(model, batch, 1) is batch  # one micro-batch: the whole-batch layout
    text = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    assert loop.micro_batch_images(model, text, 2) is text
    with pytest.raises(ValueError, match="num_micro_batches=3"):
        loop.micro_batch_images(model, batch, 3)


def test_a_step_rejects_images_split_for_another_micro_batch_count():
    rows = [[[5], (1, 2, 2), [6, 7]], [[5], (1, 2, 2), [8, 9]]] * 2
    b = tm.make_batch(rows, pad_side="right")
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    model = _model()
    split = loop.micro_batch_images(model, batch, 2)
    with pytest.raises(ValueError, match="split into 2 micro-batches.*num_micro_batches=4"):
        steps.compute_sequence_logprobs(model, dict(split, loss_mask=batch["attention_mask"]), num_micro_batches=4)


def test_the_towers_memory_is_one_micro_batchs():
    """A BT RM step (trained tower) on 8 rows of one 64-patch image each, in 4 micro-batches: XLA's
    temporary memory with the images split by micro-batch is well under the whole-batch layout's
    (the tower's activations and dense attention scores cover 2 images, not 8)."""
    rows = [[[5], (1, 8, 8), [6, 7, 8]], [[5], (1, 8, 8), [9, 10]]] * 4
    b = tm.make_batch(rows, pad_side="right")
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    model = _model(scalar_head=True)
    cfg = steps.BTConfig(num_micro_batches=4)
    temp = {}
    for name, bb in (("whole", batch), ("split", loop.micro_batch_images(model, batch, 4))):
        state = steps.TrainState(model, optax.sgd(1.0))
        graphdef, st = nnx.split(state)

        def f(st, bb):
            s = nnx.merge(graphdef, st)
            steps.bt_rm_step.__wrapped__(s, bb, cfg)  # the step's traced body, without its own jit
            return nnx.state(s)

        compiled = jax.jit(f).lower(st, {k: jax.numpy.asarray(v) for k, v in bb.items()}).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
    assert temp["split"] < 0.5 * temp["whole"], temp
