"""The family contract (`models.contract`) by test: a third, test-only family (tests/toy_family.py:
one position per image, two pixel rows per image token) runs through the engine's `generate` and the
GRPO learner's `grpo_update` unchanged, and the sampler's log-probs equal the learner's teacher-forced
ones (the engine's prefill / decode positions and image bookkeeping are the family's, not Qwen's)."""

import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
import toy_family as toy  # noqa: E402
from grlhfv_jax import models  # noqa: E402
from grlhfv_jax.models import contract  # noqa: E402
from grlhfv_jax.rollout import engine  # noqa: E402
from grlhfv_jax.trainers import grpo as learner  # noqa: E402
from grlhfv_jax.trainers import loop, steps  # noqa: E402

G, NEW = 2, 5


def _prompts():
    """3 left-padded prompts [3, 6]: an image of 2 rows (1 token), one of 4 rows (2 tokens), none."""
    I = toy.IMAGE  # noqa: E741
    rows = [[5, I, 7, 8], [I, I, 9, 10, 11, 12], [6, 10, 11]]
    ids = np.zeros((3, 6), np.int32)
    am = np.zeros((3, 6), np.int32)
    for b, r in enumerate(rows):
        ids[b, 6 - len(r) :], am[b, 6 - len(r) :] = r, 1
    pv = np.random.default_rng(0).normal(size=(6, toy.D)).astype(np.float32)
    grid = np.array([[2, 0, 7], [4, 0, 7]], np.int32)
    return dict(input_ids=ids, attention_mask=am, pixel_values=pv, image_grid_thw=grid)


@pytest.fixture(scope="module")
def sampled():
    model = toy.ToyVLM(rngs=nnx.Rngs(0))
    prompts = _prompts()
    gen = engine.generate(model, prompts, max_new_tokens=NEW, temperature=1.0, num_samples=G, rng=3)
    return model, prompts, gen


def test_the_families_declare_the_contract():
    hf = tm.tiny_hf_dict()
    hf["text_config"].update(vocab_size=64)
    qwen = models.from_config(dict(hf, image_token_id=60), rngs=nnx.Rngs(0))
    for model in (toy.ToyVLM(rngs=nnx.Rngs(0)), qwen):
        assert isinstance(model, contract.VLModel)
    assert qwen.shared_prompt and qwen.group_images and qwen.text_position_ids(np.zeros((2, 3))).shape == (3, 2, 3)
    grid = np.array([[1, 2, 4], [1, 4, 4]])
    np.testing.assert_array_equal(qwen.image_layout.rows_per_image(grid), [8, 16])
    np.testing.assert_array_equal(qwen.image_layout.tokens_per_image(grid), [2, 4])


def test_toy_positions_are_not_token_counts():
    """The toy's scheme: the 2-token image takes one position, so row 1's next position is 5, not 6."""
    model = toy.ToyVLM(rngs=nnx.Rngs(0))
    p = _prompts()
    pos, deltas = model.rope_index(p["input_ids"], p["attention_mask"])
    np.testing.assert_array_equal(np.asarray(pos)[1], [0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(np.asarray(contract.next_slot_deltas(pos, p["attention_mask"])), np.asarray(deltas))
    assert int(deltas[1]) == 5 - 6


def test_row_bookkeeping_follows_the_layout():
    p = _prompts()
    layout = toy.PairImages()
    assert layout.row_slices(p) == [(slice(0, 2), slice(0, 1)), (slice(2, 6), slice(1, 2)), (slice(6, 6), slice(2, 2))]
    rep = learner.repeat_rows(p, 2, layout)
    np.testing.assert_array_equal(
        rep["pixel_values"], np.concatenate([p["pixel_values"][:2]] * 2 + [p["pixel_values"][2:]] * 2)
    )
    sel = learner.select_rows(rep, np.array([3, 0]), layout)
    np.testing.assert_array_equal(sel["image_grid_thw"], p["image_grid_thw"][[1, 0]])
    np.testing.assert_array_equal(sel["pixel_values"], np.concatenate([p["pixel_values"][2:], p["pixel_values"][:2]]))


def test_engine_samples_the_toy_and_its_logprobs_are_the_learners(sampled):
    """`generate` on the toy family: shapes, and the sampled log-probs (KV-cache decode with the toy's
    positions, images encoded by the engine per grid) equal the teacher-forced ones of the learner's
    training rows (`sampled_batch`, `steps.compute_logprobs`, images split per micro-batch)."""
    model, prompts, gen = sampled
    assert np.asarray(gen.tokens).shape == (3 * G, NEW) and np.asarray(gen.lengths).tolist() == [NEW] * 3 * G
    batch, _, window = learner.sampled_batch(model, prompts, gen, pad_id=0)
    assert batch["pixel_values"].shape == (G * 6, toy.D)
    split = loop.micro_batch_images(model, batch, 3, G)
    assert split["micro_pixel_values"].shape == (3, 4 * G, toy.D)
    tf = np.asarray(
        steps.compute_logprobs(model, loop.place_batch(model, split), window=window, group=G, num_micro_batches=3)
    )
    mask = batch["response_mask"] > 0
    assert np.all(np.isfinite(batch["old_logp"])) and np.all(batch["old_logp"][mask] < 0)
    np.testing.assert_allclose(tf[mask], batch["old_logp"][mask], atol=2e-5)


def test_grpo_update_runs_on_the_toy(sampled):
    """`grpo_update` (reference pass, mini-batches, images split per micro-batch): finite, it moves
    the weights, and 3 micro-batches give the update of 1 (the same loss and weights)."""
    model, prompts, gen = sampled
    rewards = np.random.default_rng(1).random((3, G))
    results = []
    for m in (1, 3):
        policy = toy.ToyVLM(rngs=nnx.Rngs(0))  # the sampler's weights: old log-probs are its own
        state = steps.TrainState(policy, optax.sgd(0.5))
        cfg = steps.GRPOConfig(kl_coef=0.1, num_micro_batches=m, ref_num_micro_batches=m)
        out = learner.grpo_update(state, toy.ToyVLM(rngs=nnx.Rngs(1)), prompts, gen, rewards, pad_id=0, cfg=cfg)
        results.append((out, nnx.state(state.model, nnx.Param)))
    (one, p1), (three, p3) = results
    assert np.isfinite(one["loss"]) and abs(one["loss"] - three["loss"]) < 1e-5
    before = nnx.state(toy.ToyVLM(rngs=nnx.Rngs(0)), nnx.Param)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), p1, before)
    assert max(jax.tree.leaves(moved)) > 1e-4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), p1, p3)
