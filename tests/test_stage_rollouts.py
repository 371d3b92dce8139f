"""Sampler -> trainer glue (stages/rollouts.py): row layout, images per row, cut responses, and a
GRPO loop on a tiny Qwen2-VL that must learn a trivially learnable reward."""

import jax
import pytest
import numpy as np
from flax import nnx

from grlhfv_jax import models
from grlhfv_jax.rl import train
from grlhfv_jax.rollout import GenerationOutput, generate
from grlhfv_jax.stages import rollouts

IMG = 9  # image token id in these hand-made rows


def _batch():
    # row 0: one image of 2 tokens (8 patches at merge 2), row 1: one image of 1 token (4 patches)
    ids = np.array([[0, 5, IMG, IMG, 6], [0, 0, 5, IMG, 6]], np.int32)
    grid = np.array([[1, 2, 4], [1, 2, 2]], np.int32)
    pv = np.arange(12, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32), "pixel_values": pv,
            "image_grid_thw": grid}


def test_repeat_and_select_rows_carry_each_rows_images():
    b = _batch()
    rep = rollouts.repeat_rows(b, 2, image_token_id=IMG, merge_size=2)
    np.testing.assert_array_equal(rep["input_ids"], b["input_ids"][[0, 0, 1, 1]])
    np.testing.assert_array_equal(rep["image_grid_thw"], b["image_grid_thw"][[0, 0, 1, 1]])
    expect = np.concatenate([b["pixel_values"][:8], b["pixel_values"][:8], b["pixel_values"][8:], b["pixel_values"][8:]])
    np.testing.assert_array_equal(rep["pixel_values"], expect)
    sel = rollouts.select_rows(rep, np.array([2, 1]), image_token_id=IMG, merge_size=2)
    np.testing.assert_array_equal(sel["pixel_values"], np.concatenate([b["pixel_values"][8:], b["pixel_values"][:8]]))
    np.testing.assert_array_equal(sel["image_grid_thw"], b["image_grid_thw"][[1, 0]])


def test_training_rows_layout_and_cut_at_banned_tokens():
    b = _batch()
    gen = GenerationOutput(tokens=np.array([[7, 2, 0], [7, IMG, 2]]), logprobs=np.full((2, 3), -0.5, np.float32),
                           lengths=np.array([2, 3]), finished=np.array([True, True]))
    cut = rollouts.cut_at_tokens(gen, [IMG])
    np.testing.assert_array_equal(cut.lengths, [2, 1])
    np.testing.assert_array_equal(cut.finished, [True, False])
    np.testing.assert_array_equal(cut.logprobs, [[-0.5, -0.5, -0.5], [-0.5, 0, 0]])
    rows = rollouts.training_rows(b, cut.tokens, cut.lengths, pad_id=0)
    np.testing.assert_array_equal(rows["input_ids"], [[0, 5, IMG, IMG, 6, 7, 2, 0], [0, 0, 5, IMG, 6, 7, 0, 0]])
    np.testing.assert_array_equal(rows["attention_mask"], [[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["response_mask"], [[0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 0, 0]])


def test_grpo_loop_learns_a_learnable_reward_on_tiny_qwen2_vl():
    """Reward = share of a row's tokens with id < 64 (half the vocabulary; about 0.5 at the start):
    GRPO through the sampler and `grpo_update` must raise it."""
    from tiny_models import tiny_hf_config  # tests/ is on sys.path

    hf = tiny_hf_config("qwen2_vl").to_dict()
    model = models.from_config(hf, rngs=nnx.Rngs(0))
    ref = models.from_config(hf, rngs=nnx.Rngs(0))
    from grlhfv_jax.rl import optim
    tx, sched = optim.make_optimizer(learning_rate=1e-2, total_steps=100, warmup_steps=0, weight_decay=0.0)
    state = train.TrainState(model, tx, sched)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (4, 6)).astype(np.int32)
    prompts = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    cfg = train.GRPOConfig(kl_coef=0.0)
    means = []
    for step in range(8):
        gen = generate(state.model, prompts, max_new_tokens=4, temperature=1.0, num_samples=8,
                       rng=jax.random.key(step))
        tokens = np.asarray(gen.tokens)
        rewards = (tokens < 64).mean(axis=1).reshape(4, 8)
        means.append(rewards.mean())
        rollouts.grpo_update(state, ref, prompts, gen, rewards, pad_id=0, cfg=cfg, mini_batches=2)
    assert np.mean(means[-2:]) > np.mean(means[:2]) + 0.2, means


def test_freeze_keeps_the_vision_tower_fixed_and_trains_the_rest():
    from ml_collections import ConfigDict
    from tiny_models import make_batch, tiny_hf_config  # tests/ is on sys.path

    from grlhfv_jax.stages import common

    model = models.from_config(tiny_hf_config("qwen2_vl").to_dict(), rngs=nnx.Rngs(0))
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    state = common.make_train_state(model, ConfigDict({"lr": 1e-2, "warmup_ratio": 0.0, "freeze": ["visual"]}), 10)
    raw = make_batch([[[5, 6], (1, 4, 4), [7, 8, 9]], [(1, 2, 4), [10, 11, 12, 13]]], pad_side="right")
    batch = {k: raw[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    batch["loss_mask"] = np.asarray(batch["attention_mask"])
    train.sft_step(state, batch)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat_b = dict(jax.tree_util.tree_flatten_with_path(before)[0])
    changed = {jax.tree_util.keystr(p): not np.array_equal(flat_b[p], np.asarray(v))
               for p, v in jax.tree_util.tree_flatten_with_path(after)[0]}
    vision = [k for k in changed if k.startswith("['visual']")]
    assert vision and not any(changed[k] for k in vision)
    assert all(changed[k] for k in changed if "['model']['layers']" in k and "kernel" in k)


def test_rm_rewards_rank_incomplete_answers_last():
    from grlhfv_jax.stages.policy_rl import rm_rewards

    scores = np.array([[-3.0, -1.0, 5.0], [2.0, 7.0, 1.0]])
    complete = np.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(rm_rewards(scores, complete), [[-3.0, -1.0, -4.0], [0.0, 0.0, 0.0]])


def test_rl_schedule_spans_all_rl_steps_with_mini_batches():
    """Two optimizer updates per RL step: the learning rate must not reach zero halfway (the
    schedule counts updates, steps x mini_batches). Warm-up 0 + cosine: lr(u) = lr0 (1 + cos(pi u / U)) / 2."""
    from ml_collections import ConfigDict
    from tiny_models import tiny_hf_config  # tests/ is on sys.path

    from grlhfv_jax.stages import common

    model = models.from_config(tiny_hf_config("qwen2_vl").to_dict(), rngs=nnx.Rngs(0))
    sec = ConfigDict({"lr": 1e-3, "warmup_ratio": 0.0, "steps": 10, "mini_batches": 2})
    state = common.make_rl_train_state(model, sec)
    for u in (0, 10, 15, 19):  # update u happens in RL step u // 2
        want = 1e-3 * (1 + np.cos(np.pi * u / 20)) / 2
        assert float(state.schedule(u)) == pytest.approx(want, rel=1e-5, abs=1e-9), u
    assert float(state.schedule(10)) == pytest.approx(5e-4, rel=1e-5)  # RL step 5 of 10: half the peak


def test_grm_accuracy_metrics_on_canned_judgments(monkeypatch):
    """grm_accuracy's bookkeeping on hand-made judgments (the judge itself is replaced)."""
    from grlhfv_jax.stages import judging

    recs = [dict(question="q", image=None, response_1=f"a{i}", response_2=f"b{i}", overall_response=y, pair_type=t)
            for i, (y, t) in enumerate([(1, "style"), (2, "style"), (1, "minimal"), (2, "mixed")])]
    # dataset order, then swapped order (label flips): per pair (forward, reverse)
    fwd = [r"Scores: \boxed{7, 2}", r"Scores: \boxed{7, 2}", r"Scores: \boxed{3, 3}", "no scores"]
    rev = [r"Scores: \boxed{2, 7}", r"Scores: \boxed{7, 2}", r"Scores: \boxed{1, 9}", r"Scores: \boxed{4, 8}"]
    calls = []

    def fake_judge(grm, codec, items, **kw):
        calls.append(items)
        return fwd if len(calls) == 1 else rev

    monkeypatch.setattr(judging, "judge", fake_judge)
    monkeypatch.setattr(judging.nnx, "split", lambda m: None)
    m, samples = judging.grm_accuracy(None, None, recs, rows=4, max_len=8, max_new_tokens=8, prefix="x/")
    assert calls[1][0][2:] == ("b0", "a0")  # the second pass swaps the responses
    # forward rewards: 1, 0, 0 (tie), 0 (unparsed); reverse (labels 2, 1, 2, 1): 1, 1, 1, 0
    assert m["x/accuracy"] == pytest.approx(0.25)
    assert m["x/accuracy_both"] == pytest.approx(4 / 8)
    # decided judgments: fwd 0, 1 and rev 0..3 -> rewards 1, 0, 1, 1, 1, 0
    assert m["x/accuracy_decided"] == pytest.approx(4 / 6)
    assert m["x/tie_rate"] == pytest.approx(1 / 8) and m["x/parse_failure"] == pytest.approx(1 / 8)
    # consistent: pair 0 (prefers 1 both ways); pair 1 flips with the order; 2, 3 tie / fail
    assert m["x/position_consistency"] == pytest.approx(0.25)
    assert m["x/accuracy_style"] == pytest.approx(0.5) and m["x/accuracy_minimal"] == 0.0
    assert m["x/accuracy_mixed"] == 0.0 and len(samples) == 4
