"""The `vision` stage: attribute labels of the world's images and the tower pretraining."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhfv_jax import models, processing
from grlhfv_jax.data import world as W
from grlhfv_jax.stages import vision
from grlhfv_jax.trainers import steps
from tiny_models import tiny_hf_config


def test_attribute_labels_hand_case():
    scene = W.Scene(shape="diamond", colour="yellow", count=3, position="top", centres=((14, 7), (28, 7), (42, 7)))
    # ATTRS order: colour (red green blue yellow purple), count (1-4), shape (circle square triangle
    # diamond), position (left right top bottom)
    np.testing.assert_array_equal(W.attribute_labels(scene), [3, 2, 3, 2])


def test_vision_examples_are_deterministic_and_skip_heldout_combos():
    cfg = W.WorldConfig()
    imgs, labels = W.vision_examples(cfg, 0, 5, 300)
    imgs2, labels2 = W.vision_examples(cfg, 0, 5, 300)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(imgs[7], imgs2[7])
    assert not np.array_equal(W.vision_examples(cfg, 1, 5, 300)[1], labels)  # another stream, other scenes
    colours, shapes = np.array(list(W.COLOURS)), np.array(W.SHAPES)
    combos = set(zip(colours[labels[:, 0]], shapes[labels[:, 2]]))
    assert combos and not combos & set(cfg.heldout_combos)
    assert len(combos) == 20 - len(cfg.heldout_combos)  # every other combination drawn in 300
    # the label's colour is the image's only non-background colour
    first = imgs[0].reshape(-1, 3)
    present = {tuple(p) for p in first} - {W.BACKGROUND}
    assert present == {W.COLOURS[colours[labels[0, 0]]]}


def test_pretraining_trains_the_tower_and_makes_attributes_readable():
    """A random tiny tower trained with the stage's step for 60 steps: the tower's weights move and
    held-out count and position accuracy are far above chance (0.25); colour and shape take this
    1-block tower longer (the demo's 2-block tower reads all four, see docs/results.md)."""
    cfg = W.WorldConfig()
    hf = tiny_hf_config(
        text=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
        ),
        vision=dict(depth=1, embed_dim=32),
    )
    model = models.from_config(hf.to_dict(), rngs=nnx.Rngs(0))
    proc = processing.load_image_processor(min_pixels=56 * 56, max_pixels=56 * 56)

    def batch(stream, index, n):
        imgs, labels = W.vision_examples(cfg, stream, index, n)
        enc = proc(images=imgs, return_tensors="np")
        return np.asarray(enc["pixel_values"], np.float32), np.asarray(enc["image_grid_thw"]), labels

    pv, grid, _ = batch(0, 0, 32)
    probe = vision.VisionProbe(model.visual, 4, 32, nnx.Rngs(1))
    import optax

    state = steps.TrainState(probe, optax.adam(3e-3))
    before = np.asarray(model.visual.patch_embed.proj.kernel[...]).copy()
    step = vision.make_step(grid)
    for i in range(60):
        pv, _, labels = batch(0, i, 32)
        state, met = step(state, {"pixel_values": pv, "labels": labels})
    assert np.isfinite(float(met["loss"]))
    pv, g, labels = batch(1, 0, 128)
    logits = probe(jnp.asarray(pv), jnp.asarray(g))
    acc = [float(np.mean(np.asarray(lg).argmax(-1) == labels[:, k])) for k, lg in enumerate(logits)]
    assert acc[1] > 0.8 and acc[3] > 0.9, acc
    assert np.abs(np.asarray(model.visual.patch_embed.proj.kernel[...]) - before).max() > 1e-3
