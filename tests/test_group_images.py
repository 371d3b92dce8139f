"""The images of GRPO rows that repeat one prompt, kept once per group (`model.group_first_images`)
after the batch's pixel rows were padded to a bucket (`trainers.loop.place_batch`): the padding
contract (`model.patch_unit`, `model.group_patch_rows`) at the demo's real shapes and over group sizes
and patch counts. The README's demo crashed in stage 2 (n = 5, 8 prompts of 56 x 56 images: 640
patches padded to 768, 768 / 5 -> 154 rows, not whole 2 x 2 merge units). Each case: the kept images
encode, are the prompts' own, and give the per-row layout's log-probs."""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "configs"))
import demo  # noqa: E402

import tiny_models as tm  # noqa: E402
from grlhfv_jax import models, processing  # noqa: E402
from grlhfv_jax.models.qwen2_vl import QwenImages  # noqa: E402
from grlhfv_jax.rollout.engine import GenerationOutput  # noqa: E402
from grlhfv_jax.trainers import grpo as learner  # noqa: E402
from grlhfv_jax.trainers import loop, steps  # noqa: E402

DEMO_GRID = (1, 4, 4)  # the demo's 56 x 56 images (configs/demo.py c.image): 16 patches, 4 image tokens


def _hf_config(**text):
    """The demo's model (configs/demo.py tiny_qwen2_vl) with the tiny test vocabulary's ids."""
    cfg = demo.tiny_qwen2_vl(**text)
    cfg["text_config"]["vocab_size"] = tm.VOCAB
    return dict(
        cfg,
        image_token_id=tm.IMAGE,
        video_token_id=tm.VIDEO,
        vision_start_token_id=tm.VISION_START,
        vision_end_token_id=tm.VISION_END,
    )


@pytest.fixture(scope="module")
def model():
    return models.from_config(_hf_config(), rngs=nnx.Rngs(0))


def _rows(P, G, grids, prompt_len=6, resp=4, seed=0):
    """P left-padded prompts (text, one image of grids[p], text), G responses each, in
    `trainers.grpo`'s row layout (`repeat_rows` + `training_rows`), responses of 1..resp tokens."""
    rng = np.random.default_rng(seed)
    prompts = tm.make_batch(
        [[list(rng.integers(3, 99, 1 + p % prompt_len)), grids[p], list(rng.integers(3, 99, 2))] for p in range(P)],
        pad_side="left",
        seed=seed,
    )
    prompts = {k: prompts[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    rows = learner.repeat_rows(prompts, G, QwenImages(tm.IMAGE, tm.MERGE))
    lengths = rng.integers(1, resp + 1, P * G)
    lengths[0] = resp
    b = learner.training_rows(rows, rng.integers(3, 99, (P * G, resp)), lengths, pad_id=tm.PAD)
    b["window_start"] = np.full(P * G, prompts["input_ids"].shape[1], np.int32)
    return b, prompts


def _logprobs(model, b, group, resp):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "window_start")
    jb = loop.place_batch(model, {k: b[k] for k in keys})
    return np.asarray(steps.compute_logprobs(model, jb, window=resp, group=group)), jb


def test_the_padding_contract_by_hand(model):
    """patch_unit: 64 (no vision block) in whole 2 x 2 units; group_patch_rows: ceil(N / G) rounded
    up to whole units. The demo's stage 2: 8 x 5 rows x 16 patches = 640 -> bucket 768 -> 156 rows
    (154 crashed the tower); stage 1: 32 prompts x 4 = 2048 patches -> 512."""
    assert model.merge_unit() == 4 and model.patch_unit() == 64 == loop.patch_unit(model)
    assert processing.patch_bucket(8 * 5 * 16, model.patch_unit()) == 768
    assert model.group_patch_rows(768, 5) == 156
    assert model.group_patch_rows(2048, 4) == 512
    assert model.group_patch_rows(192, 7) == 28 and model.group_patch_rows(64, 3) == 24  # 27.4 -> 28, 21.3 -> 24
    blocked = models.from_config(_hf_config(), rngs=nnx.Rngs(0), vision_block=18)
    assert blocked.patch_unit() == 20  # a vision block of 18 patches: in whole merge units


def test_stage_2_of_the_demo_trains_with_its_images_once_per_group(model):
    """grpo_update at the demo's stage-2 shapes (8 prompts, n = 5, one 56 x 56 image each, one
    mini-batch): the reference pass and the update run (the crash), and the reference log-probs are
    those of the per-row layout."""
    P, G, R = 8, 5, 4
    b, prompts = _rows(P, G, [DEMO_GRID] * P, resp=R)
    ref = models.from_config(_hf_config(), rngs=nnx.Rngs(1))
    want, _ = _logprobs(ref, b, 1, R)
    resp = b["response_mask"][:, -R:]
    gen = GenerationOutput(
        b["input_ids"][:, -R:],
        np.where(resp > 0, -2.0, 0.0).astype(np.float32),
        resp.sum(1).astype(np.int32),
        np.ones(P * G, bool),
    )
    rewards = np.random.default_rng(0).random((P, G))
    seen = {}
    original = steps.compute_logprobs

    def spy(m, batch, **kw):
        out = original(m, batch, **kw)
        seen["ref_logp"], seen["group"] = np.asarray(out), kw.get("group")
        return out

    cfg = steps.GRPOConfig(kl_coef=0.3)
    state = steps.TrainState(model, optax.sgd(1e-3))
    try:
        steps.compute_logprobs = spy
        out = learner.grpo_update(state, ref, prompts, gen, rewards, pad_id=tm.PAD, cfg=cfg, mini_batches=1)
    finally:
        steps.compute_logprobs = original
    assert seen["group"] == G and np.isfinite(out["loss"])
    mask = b["response_mask"] > 0
    assert np.all(want[mask] < 0)
    np.testing.assert_allclose(seen["ref_logp"], want, atol=2e-6)


# group sizes x prompts x image grids: patch counts that are and are not multiples of the group
CASES = [
    (3, 1, [(1, 2, 2)]),
    (3, 2, [(1, 4, 4), (1, 2, 4)]),
    (5, 3, [DEMO_GRID, (1, 2, 6), (1, 4, 2)]),
    (5, 8, [DEMO_GRID] * 8),
    (7, 2, [(1, 6, 4), (1, 2, 2)]),
    (7, 3, [DEMO_GRID] * 3),
    (4, 32, [DEMO_GRID] * 32),
    (9, 1, [(1, 4, 6)]),
]


@pytest.mark.parametrize("G,P,grids", CASES, ids=[f"G{c[0]}-P{c[1]}" for c in CASES])
def test_images_once_per_group_after_the_bucket_encode_and_are_the_prompts_own(model, G, P, grids):
    """After `place_batch`'s bucket: the kept rows are whole merge units (`group_patch_rows`), hold
    the prompts' patches first then zeros, their grid is the prompts' (zero rows pad), and the
    tower takes them."""
    b, prompts = _rows(P, G, grids)
    padded = loop.place_batch(model, {k: b[k] for k in ("input_ids", "pixel_values", "image_grid_thw")})
    N = padded["pixel_values"].shape[0]
    assert N == processing.patch_bucket(b["pixel_values"].shape[0], model.patch_unit())
    pv, grid = model.group_first_images(padded["input_ids"], padded["pixel_values"], padded["image_grid_thw"], G)
    real = int(np.prod(prompts["image_grid_thw"], axis=1).sum())
    assert pv.shape[0] == model.group_patch_rows(N, G) and pv.shape[0] % model.merge_unit() == 0
    np.testing.assert_array_equal(np.asarray(pv)[:real], prompts["pixel_values"])
    assert not np.asarray(pv)[real:].any()
    np.testing.assert_array_equal(np.asarray(grid), prompts["image_grid_thw"])
    # the tower takes them (shapes only here; their values: the log-prob tests below)
    emb = jax.eval_shape(model.encode_images, pv, grid)
    assert emb.shape == (pv.shape[0] // model.merge_unit(), model.config.hidden_size)


@pytest.mark.parametrize("G,P,grids", [CASES[2], CASES[4], CASES[7]], ids=["G5-P3", "G7-P2", "G9-P1"])
def test_logprobs_with_images_once_per_group_equal_the_per_row_layout(model, G, P, grids):
    b, _ = _rows(P, G, grids)
    want, _ = _logprobs(model, b, 1, 4)
    got, _ = _logprobs(model, b, G, 4)
    assert np.all(want[b["response_mask"] > 0] < 0)
    np.testing.assert_allclose(got, want, atol=2e-6)
