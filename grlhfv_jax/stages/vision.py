"""Stage `vision`: pretrain the vision tower on the world's images (the demo's stand-in for a
pretrained ViT).

Real VLMs start from a ViT pretrained on large image data; the demo's tower is random. A random,
frozen tower keeps the facts linearly decodable, but the tiny language model does not learn to
read them in minutes (measured: the SFT models answer colour questions at chance). This stage
trains the tower of `config.model[sec.model]` with four linear heads on its merged image tokens to
classify each image's colour, count, shape and position (cross-entropy, summed), on freshly
rendered training scenes (`world.vision_examples`; held-out colour-shape combinations are never
drawn). Only image labels are used: no questions, answers or preferences.

Writes `workdir/vision/model`, an HF folder (the tower trained, the language model at its random
initialisation); the `sft` stage copies its tower into a target whose section sets
`pretrained_vision=True`.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from grlhfv_jax import roles, sharding
from grlhfv_jax.checkpoint import export_hf, exported_summary
from grlhfv_jax.data import world as W
from grlhfv_jax.trainers import loop, steps


class VisionProbe(nnx.Module):
    """A vision tower with one linear head per attribute on its concatenated image tokens."""

    def __init__(self, visual, tokens_per_image: int, hidden: int, rngs: nnx.Rngs):
        self.visual = visual
        self.tokens_per_image = tokens_per_image
        self.heads = nnx.List(
            [nnx.Linear(tokens_per_image * hidden, len(W.ATTR_VALUES[a]), rngs=rngs) for a in W.ATTRS]
        )

    def __call__(self, pixel_values, image_grid_thw):
        """pixel_values [B * patches, C*t*p*p] -> one logits array [B, classes] per attribute."""
        feats = self.visual(pixel_values, image_grid_thw)
        feats = feats.reshape(-1, self.tokens_per_image * feats.shape[-1])
        return [head(feats) for head in self.heads]


def _loss(probe, pixel_values, grid, labels):
    logits = probe(pixel_values, grid)
    losses = [optax.softmax_cross_entropy_with_integer_labels(lg, labels[:, i]).mean() for i, lg in enumerate(logits)]
    accs = [jnp.mean(lg.argmax(-1) == labels[:, i]) for i, lg in enumerate(logits)]
    return sum(losses), jnp.stack(accs)


def make_step(grid: np.ndarray):
    """A jitted update for batches of images with the static grid `grid` [B, 3]."""
    grid = jnp.asarray(grid)

    @nnx.jit
    def step(state: steps.TrainState, pixel_values, labels):
        (loss, accs), grads = nnx.value_and_grad(_loss, has_aux=True)(state.model, pixel_values, grid, labels)
        state.optimizer.update(state.model, grads)
        return {"loss": loss, **{f"accuracy_{a}": accs[i] for i, a in enumerate(W.ATTRS)}}

    return lambda state, b: (state, step(state, b["pixel_values"], b["labels"]))


def run(config, workdir: str, writer, section: str) -> dict:
    sec = config[section]
    out = roles.output_dir(workdir, "vision")
    done = exported_summary(out)
    if done is not None:
        print(f"[vision] {out} exists, skipping", flush=True)
        return done
    roles.paths(config, workdir)  # the tokenizer (for the model's vocabulary) must exist
    world = roles.world_config(config)
    codec = roles.codec(config, workdir)
    mesh = roles.mesh_from_config(config)
    model = roles.new_or_load(config.model[sec.model], codec, seed=config.seed + 7, mesh=mesh, config=config)
    B = int(sec.batch_size)

    def images(stream, index, n):
        imgs, labels = W.vision_examples(world, stream, index, n)
        pv, grid = codec.prompts.images(codec.image_processor, imgs)  # the family's image rows
        return pv, grid, labels

    pv, grid, _ = images(0, 0, B)
    tokens = int(model.image_layout.tokens_per_image(grid[:1])[0])
    if np.any(grid != grid[0]):
        raise ValueError(
            f"[vision] images of one size expected (config.image min_pixels = max_pixels), got grids {grid}"
        )
    probe = VisionProbe(model.visual, tokens, model.config.hidden_size, nnx.Rngs(config.seed + 8))
    sharding.shard_model(probe, mesh)  # the heads too: a restored checkpoint puts every array on the mesh
    state = loop.make_train_state(probe, sec, sec.steps)

    def make_batch(step):
        pv, _, labels = images(0, step, B)
        return {"pixel_values": pv, "labels": labels}

    loop.train_loop(
        section,
        state,
        steps=sec.steps,
        make_batch=make_batch,
        step_fn=make_step(grid),
        writer=writer,
        ckpt_dir=os.path.join(workdir, "vision", "ckpt"),
        log_every=int(sec.log_every),
        ckpt_every=int(sec.ckpt_every),
    )
    # held-out images (another stream): accuracy of the heads on the trained tower
    correct, n_eval = np.zeros(len(W.ATTRS)), int(sec.eval_images)
    for i, start in enumerate(range(0, n_eval, B)):
        pv, g, labels = images(1, i, min(B, n_eval - start))
        logits = probe(jnp.asarray(pv), jnp.asarray(g))
        correct += [np.sum(np.asarray(lg).argmax(-1) == labels[:, k]) for k, lg in enumerate(logits)]
    acc = {f"vision/heldout_accuracy_{a}": float(c / n_eval) for a, c in zip(W.ATTRS, correct)}
    writer.write(section, int(sec.steps), acc)
    print(f"[vision] held-out attribute accuracy {acc}", flush=True)
    export_hf(model, out, summary=acc, codec=codec)
    return acc


def memory_phases(config, section: str) -> list:
    """None for the dry run to price (the synthetic world's tower pretraining: not planned)."""
    return []
