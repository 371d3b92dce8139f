"""GRPO rows that share their prompt (a prompt and its G sampled responses) run the prompt once per
group (`model.shared_prompt_hidden`, `group=` of `steps.grpo_step` / `steps.compute_logprobs`).
Checked against the full forward of every row (itself checked against transformers in
test_qwen2_vl_parity), with the batch layout `trainers.grpo` builds: left-padded prompts with
images, right-padded responses of different lengths."""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from grlhfv_jax import models  # noqa: E402
from grlhfv_jax.models.qwen2_vl import QwenImages  # noqa: E402
from grlhfv_jax.trainers import grpo as learner  # noqa: E402
from grlhfv_jax.trainers import steps  # noqa: E402

P, G, R = 4, 2, 5


def _hf_config():
    cfg = tm.tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    cfg["vision_config"]["depth"] = 1
    return cfg


def _model(**kw):
    return models.from_config(_hf_config(), rngs=nnx.Rngs(0), **kw)


@pytest.fixture(scope="module")
def batch():
    """P prompts (text, an image of its own size, text; left-padded), G responses each of length
    1..R (right-padded), in `trainers.grpo`'s row layout, with GRPO's other inputs."""
    rng = np.random.default_rng(0)
    grids = [(1, 2, 4), (1, 4, 2), (1, 2, 2), (1, 4, 4)]
    prompts = tm.make_batch(
        [[list(rng.integers(3, 99, 1 + k)), grids[k], list(rng.integers(3, 99, 2))] for k in range(P)], pad_side="left"
    )
    prompts = {k: prompts[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    rows = learner.repeat_rows(prompts, G, QwenImages(tm.IMAGE, 2))
    lengths = rng.integers(1, R + 1, P * G)
    lengths[0] = R
    b = learner.training_rows(rows, rng.integers(3, 99, (P * G, R)), lengths, pad_id=tm.PAD)
    Tp = prompts["input_ids"].shape[1]
    b["window_start"] = np.full(P * G, Tp, np.int32)
    mask = b["response_mask"].astype(np.float32)
    b["old_logp"] = (-3.0 + 0.3 * rng.normal(size=mask.shape) * mask).astype(np.float32) * mask
    b["ref_logp"] = (b["old_logp"] + 0.1 * rng.normal(size=mask.shape) * mask).astype(np.float32)
    b["advantages"] = rng.normal(size=P * G).astype(np.float32)
    return b, Tp, prompts


def test_shared_prompt_hidden_equals_the_full_forward(batch):
    b, Tp, _ = batch
    for remat in (False, True):
        model = _model(remat=remat)
        pos, _ = model.rope_index(b["input_ids"], b["attention_mask"], b["image_grid_thw"])
        emb = model.encode_images(b["pixel_values"], b["image_grid_thw"])
        full = model(b["input_ids"], b["attention_mask"], position_ids=pos, image_embeds=emb, return_hidden=True)
        got = model.shared_prompt_hidden(
            b["input_ids"], b["attention_mask"], group=G, prompt_len=Tp, position_ids=pos, image_embeds=emb
        )
        assert got.shape == (P * G, R, full.shape[-1])
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(full[:, Tp - 1 : -1]), atol=2e-5, err_msg=f"remat={remat}"
        )
    with pytest.raises(ValueError, match="groups of 3"):
        model.shared_prompt_hidden(
            b["input_ids"], b["attention_mask"], group=3, prompt_len=Tp, position_ids=pos, image_embeds=emb
        )


def test_compute_logprobs_with_shared_prompts_equals_per_row(batch):
    b, Tp, _ = batch
    model = _model()
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "window_start")
    jb = {k: jnp.asarray(b[k]) for k in keys}
    want = np.asarray(steps.compute_logprobs(model, jb, window=R))
    got = np.asarray(steps.compute_logprobs(model, jb, window=R, group=G, num_micro_batches=2))
    mask = b["response_mask"] > 0
    assert np.all(want[mask] < 0)
    np.testing.assert_allclose(got, want, atol=2e-6)
    with pytest.raises(ValueError, match="needs window"):
        steps.compute_logprobs(model, jb, group=G)


def test_grpo_step_with_shared_prompts_equals_per_row(batch):
    """The same loss, metrics and SGD update (vision tower trained too: its gradient arrives through
    each group's first row only, summed)."""
    b, _, _ = batch
    jb = {k: jnp.asarray(v) for k, v in b.items()}
    runs = []
    for group in (1, G):
        model = _model()
        before = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        _, m = steps.grpo_step(
            steps.TrainState(model, optax.sgd(1.0)), jb, steps.GRPOConfig(num_micro_batches=2), window=R, group=group
        )
        after = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        runs.append(({k: float(v) for k, v in m.items()}, after))
    (m1, p1), (m2, p2) = runs
    for key in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "grad_norm"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), key
    assert any(k[0] == "visual" and np.max(np.abs(p1[k] - before[k])) > 1e-6 for k in p1)
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k], rtol=1e-4, atol=2e-6, err_msg=str(k))
    with pytest.raises(ValueError, match="whole groups of 3"):
        steps.grpo_step(
            steps.TrainState(_model(), optax.sgd(1.0)), jb, steps.GRPOConfig(num_micro_batches=2), window=R, group=3
        )


def test_group_first_images_are_the_prompts_own(batch):
    """`model.group_first_images` undoes `trainers.grpo.repeat_rows`: the pixels and grid of each
    group's first row are exactly the P prompts' own (images of four sizes), so the tower encodes
    N / G patches; padding patches past the grid total and zero grid rows are left out."""
    b, _, prompts = batch
    model = _model()
    pv, grid = model.group_first_images(b["input_ids"], b["pixel_values"], b["image_grid_thw"], G)
    np.testing.assert_array_equal(np.asarray(grid), prompts["image_grid_thw"])
    np.testing.assert_array_equal(np.asarray(pv), prompts["pixel_values"])
    # a padded batch (fixed shapes): 8 patches past the grid total and a zero grid row per group
    n_pad = G * 4
    padded_pv = np.concatenate([b["pixel_values"], np.ones((n_pad, b["pixel_values"].shape[1]), np.float32)])
    padded_grid = np.concatenate([b["image_grid_thw"], np.zeros((G, 3), np.int32)])
    pv, grid = model.group_first_images(b["input_ids"], padded_pv, padded_grid, G)
    real = int(np.prod(prompts["image_grid_thw"], axis=1).sum())
    np.testing.assert_array_equal(np.asarray(grid)[:P], prompts["image_grid_thw"])
    assert not np.asarray(grid)[P:].any() and pv.shape[0] == padded_pv.shape[0] // G
    np.testing.assert_array_equal(np.asarray(pv)[:real], prompts["pixel_values"])
    with pytest.raises(ValueError, match="runs of 3 rows"):
        model.group_first_images(b["input_ids"], b["pixel_values"], b["image_grid_thw"], 3)


def test_images_split_by_micro_batch_give_the_same_logprobs_and_update(batch):
    """`loop.micro_batch_images` (each micro-batch runs the tower on its own images, here only each
    group's first row's): the reference log-probs and the GRPO step's loss, metrics and SGD update
    (vision tower trained) of the whole-batch layout. (Group 1, all rows' images: DPO / BT RM in
    test_trainers_steps.py.)"""
    from grlhfv_jax.trainers import loop

    b, _, _ = batch
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "window_start")
    model = _model()
    split = loop.micro_batch_images(model, b, 2, G)
    assert "pixel_values" not in split and split["micro_pixel_values"].shape[0] == 2
    lp = [
        np.asarray(
            steps.compute_logprobs(
                model,
                {k: jnp.asarray(bb[k]) for k in keys + steps.MICRO_IMAGE_KEYS if k in bb},
                window=R,
                group=G,
                num_micro_batches=2,
            )
        )
        for bb in (b, split)
    ]
    np.testing.assert_allclose(lp[1], lp[0], atol=2e-6)
    runs = []
    for bb in (b, split):
        m_ = _model()
        _, met = steps.grpo_step(
            steps.TrainState(m_, optax.sgd(1.0)),
            {k: jnp.asarray(v) for k, v in bb.items()},
            steps.GRPOConfig(num_micro_batches=2),
            window=R,
            group=G,
        )
        runs.append(
            (
                {k: float(v) for k, v in met.items()},
                {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(m_, nnx.Param))},
            )
        )
    (m1, p1), (m2, p2) = runs
    for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), key
    init = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(_model(), nnx.Param))}
    assert any(k[0] == "visual" and np.max(np.abs(p1[k] - init[k])) > 1e-6 for k in p1)
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k], rtol=1e-4, atol=2e-6, err_msg=str(k))
