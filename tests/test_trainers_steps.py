"""Optimiser schedule and the jitted train steps on a tiny random Qwen2-VL (models.from_config).

GRPO: one step on 8 fake devices with 2 micro-batches == one plain full-batch update written in
this file (direct model forward with pixel_values, loss re-derived with jnp, nnx.grad); then the
loss goes down. BT RM / DPO / SFT: first-step loss against a value computed here, then the loss
goes down over a few steps on a fixed batch. Compiled functions are few and module-scoped.
"""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from grlhfv_jax import models, sharding  # noqa: E402
from grlhfv_jax.rl import logprobs, optim  # noqa: E402
from grlhfv_jax.trainers import steps  # noqa: E402

# ------------------------------------------------------------------------------------ optimiser


def test_lr_schedule_warmup_then_cosine():
    sch = optim.lr_schedule(2.0, 100, warmup_ratio=0.1)  # 10 warm-up steps
    for step in [0, 3, 10, 40, 77, 100]:
        if step < 10:
            want = 2.0 * step / 10
        else:
            want = 0.5 * 2.0 * (1 + math.cos(math.pi * (step - 10) / 90))
        assert float(sch(step)) == pytest.approx(want, abs=1e-6), step
    assert float(optim.lr_schedule(1.0, 10, warmup_steps=0)(0)) == pytest.approx(1.0)


def test_weight_decay_skips_vectors_and_clipping():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    tx, _ = optim.make_optimizer(learning_rate=0.1, total_steps=10, warmup_steps=0, weight_decay=0.5)
    upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(upd["w"]), -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)  # decoupled decay
    np.testing.assert_array_equal(np.asarray(upd["b"]), 0.0)
    # global-norm clipping before Adam: direction unchanged, Adam's first step is lr * sign
    tx, _ = optim.make_optimizer(
        learning_rate=0.1, total_steps=10, warmup_steps=0, weight_decay=0.0, max_grad_norm=1e-3
    )
    g = {"w": jnp.full((2, 2), 3.0), "b": jnp.array([-4.0, 0.0])}
    upd, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(upd["w"]), -0.1, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(upd["b"]), [0.1, 0.0], rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------- tiny model, batch


def _hf_config():
    cfg = tm.tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    cfg["vision_config"]["depth"] = 1
    return cfg


@pytest.fixture(scope="module")
def hf_config():
    return _hf_config()


def _make_model(cfg, **kw):
    return models.from_config(cfg, rngs=nnx.Rngs(0), **kw)


@pytest.fixture(scope="module")
def data():
    """8 rows: prompt with one image + response, right-padded. Rows are chosen/rejected pairs
    (2k, 2k+1) sharing the prompt, for BT / DPO."""
    rng = np.random.default_rng(0)
    grids = [(1, 2, 4), (1, 4, 2), (1, 2, 2), (1, 4, 4)]
    rows, resp_len = [], []
    for k in range(4):
        prompt = [list(rng.integers(3, 99, 2 + k)), grids[k], [int(rng.integers(3, 99))]]
        for _ in range(2):
            n = int(rng.integers(3, 7))
            resp = list(rng.integers(3, 99, n))
            rows.append(prompt + [resp])
            resp_len.append(n)
    b = tm.make_batch(rows, pad_side="right")
    B, T = b["input_ids"].shape
    resp = np.zeros((B, T), np.float32)
    for i, n in enumerate(resp_len):
        end = int(b["attention_mask"][i].sum())
        resp[i, end - n : end] = 1.0
    return dict(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        pixel_values=b["pixel_values"],
        image_grid_thw=b["image_grid_thw"],
        response_mask=resp,
        loss_mask=resp,
    )


def _ref_token_logprobs(logits, ids):
    """log p(ids[t] | < t) for t >= 1: [B, T-1], written with jax.nn.log_softmax."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


# ------------------------------------------------------------------------------------------ GRPO


@pytest.fixture(scope="module")
def grpo_run(hf_config, data):
    """Old log-probs via compute_logprobs; one reference update; one sharded grpo_step."""
    tx = optax.sgd(1.0)  # SGD: parameter change = gradient, so the comparison is tight
    ref_model = _make_model(hf_config)
    ref_model_init = _make_model(hf_config)  # stays at the initial weights
    old = np.asarray(steps.compute_logprobs(ref_model, data))
    rng = np.random.default_rng(1)
    batch = dict(
        data,
        old_logp=old,
        ref_logp=(old + 0.1 * rng.normal(size=old.shape) * data["response_mask"]).astype(np.float32),
        advantages=rng.normal(size=(old.shape[0],)).astype(np.float32),
    )
    # make the clip active for some tokens: old log-probs shifted
    batch["old_logp"] = (old + 0.3 * rng.normal(size=old.shape) * data["response_mask"]).astype(np.float32)

    # --- the plain reference: full batch, direct forward with pixel_values, loss written here
    opt = nnx.Optimizer(ref_model, tx, wrt=nnx.Param)

    @nnx.jit
    def ref_update(model, opt, b):
        def loss_fn(model):
            logits = model(b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"])
            lp = _ref_token_logprobs(logits, b["input_ids"])
            mask, a = b["response_mask"][:, 1:], b["advantages"][:, None]
            ratio = jnp.exp(lp - b["old_logp"][:, 1:])
            surr = jnp.maximum(-a * ratio, -a * jnp.clip(ratio, 0.8, 1.2))
            d = b["ref_logp"][:, 1:] - lp
            k3 = jnp.exp(d) - d - 1
            n = jnp.sum(mask)
            pg, kl = jnp.sum(surr * mask) / n, jnp.sum(k3 * mask) / n
            p = jax.nn.softmax(logits[:, :-1], axis=-1)
            ent = jnp.sum(-jnp.sum(p * jnp.log(p), axis=-1) * mask) / n
            return pg + 0.02 * kl, {"lp": lp, "pg_loss": pg, "kl": kl, "entropy": ent}

        (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, aux

    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    ref_loss, ref_aux = ref_update(ref_model, opt, jb)
    ref_lp0 = ref_aux.pop("lp")

    # --- grpo_step on a 2x2x2 mesh with 2 micro-batches
    mesh = sharding.make_mesh((2, 2, 2))
    model = sharding.shard_model(_make_model(hf_config), mesh)
    state = steps.TrainState(model, tx)
    sb = sharding.shard_batch(batch, mesh)
    cfg = steps.GRPOConfig(num_micro_batches=2)
    _, m0 = steps.grpo_step(state, sb, cfg)
    after_1 = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    losses = [float(m0["loss"])]
    for _ in range(3):
        _, m = steps.grpo_step(state, sb, cfg)
        losses.append(float(m["loss"]))
    return dict(
        batch=batch,
        old=old,
        ref_model=ref_model,
        ref_model_init=ref_model_init,
        ref_loss=float(ref_loss),
        ref_lp0=np.asarray(ref_lp0),
        ref_metrics={k: float(v) for k, v in ref_aux.items()},
        state=state,
        m0={k: float(v) for k, v in m0.items()},
        losses=losses,
        params_after_1=after_1,
    )


def test_compute_logprobs_matches_direct_forward(grpo_run):
    old, lp0 = grpo_run["old"], grpo_run["ref_lp0"]
    np.testing.assert_array_equal(old[:, 0], 0.0)
    np.testing.assert_allclose(old[:, 1:], lp0, atol=2e-5)


def test_grpo_step_sharded_microbatched_equals_plain_update(grpo_run, hf_config):
    # first-step loss and metrics against the plain reference
    m0 = grpo_run["m0"]
    assert m0["loss"] == pytest.approx(grpo_run["ref_loss"], rel=1e-4, abs=1e-6)
    b = grpo_run["batch"]
    mask = b["response_mask"] > 0
    assert m0["response_length_mean"] == pytest.approx(b["response_mask"].sum(1).mean())
    lr = (grpo_run["ref_lp0"] - b["old_logp"][:, 1:])[mask[:, 1:]]
    assert m0["ppo_kl"] == pytest.approx(-lr.mean(), rel=1e-3, abs=1e-6)
    assert 0.0 < m0["clip_frac"] < 1.0
    for key in ("pg_loss", "kl", "entropy"):
        assert m0[key] == pytest.approx(grpo_run["ref_metrics"][key], rel=1e-4, abs=1e-6), key
    for key in ("pg_loss", "kl", "entropy", "approx_kl", "grad_norm", "clip_frac"):
        assert np.isfinite(m0[key]), key


def test_sharded_step_with_images_split_by_micro_batch(grpo_run, hf_config):
    """The fixture's sharded step (2 x 2 x 2 mesh, 2 micro-batches) with its images split by
    micro-batch (`loop.micro_batch_images`, placed by `loop.place_batch`: each micro-batch's tower
    over its own images, split over the devices): the same loss and parameters after one step."""
    from grlhfv_jax.trainers import loop

    model = sharding.shard_model(_make_model(hf_config), sharding.make_mesh((2, 2, 2)))
    state = steps.TrainState(model, optax.sgd(1.0))
    batch = loop.place_batch(model, loop.micro_batch_images(model, grpo_run["batch"], 2))
    assert "pixel_values" not in batch and batch["micro_pixel_values"].shape[0] == 2
    _, m = steps.grpo_step(state, batch, steps.GRPOConfig(num_micro_batches=2))
    assert float(m["loss"]) == pytest.approx(grpo_run["m0"]["loss"], rel=1e-5, abs=1e-7)
    got = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for k, want in grpo_run["params_after_1"].items():
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=2e-6, err_msg=str(k))


def test_grpo_params_match_after_one_step(grpo_run, hf_config):
    got = grpo_run["params_after_1"]
    want = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(grpo_run["ref_model"], nnx.Param))}
    init = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(_make_model(hf_config), nnx.Param))}
    assert got.keys() == want.keys()
    moved = 0
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-6, err_msg=str(k))
        moved += int(np.max(np.abs(want[k] - init[k])) > 1e-6)
    assert moved > len(want) // 2  # the update really moved most tensors
    assert any("visual" in str(k) and np.max(np.abs(want[k] - init[k])) > 1e-6 for k in want)  # vision too


def test_window_helpers_hand_cases():
    mask = np.array(
        [
            [0, 0, 1, 1, 0, 0],  # targets at columns 2..3
            [0, 0, 0, 0, 1, 1],  # 4..5
            [1, 0, 0, 0, 0, 0],
        ]
    )  # column 0 never counts: no target
    start, length = logprobs.window_start_and_length(mask, multiple=2)
    np.testing.assert_array_equal(start, [2, 4, 1])
    assert length == 2
    _, length = logprobs.window_start_and_length(np.array([[0, 1, 0, 0, 1, 0]]), multiple=3)
    assert length == 5  # columns 1..4 need 4, rounded up to 6, capped at T - 1 = 5
    cols, valid = logprobs.window_columns(jnp.array([2, 4, 1]), 3, 6)
    np.testing.assert_array_equal(cols, [[2, 3, 4], [4, 5, 5], [1, 2, 3]])
    np.testing.assert_array_equal(valid, [[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    x = jnp.arange(18.0).reshape(3, 6)
    np.testing.assert_array_equal(logprobs.gather_columns(x, cols), [[2, 3, 4], [10, 11, 11], [13, 14, 15]])
    back = logprobs.scatter_columns(logprobs.gather_columns(x, cols), cols, valid, 6)
    np.testing.assert_array_equal(back, [[0, 0, 2, 3, 4, 0], [0, 0, 0, 0, 10, 11], [0, 13, 14, 15, 0, 0]])


@pytest.fixture(scope="module")
def windowed(data):
    """The data's response window (rows start at different columns: right padding)."""
    start, length = logprobs.window_start_and_length(data["response_mask"], multiple=4)
    return dict(data, window_start=start), length


def test_compute_logprobs_on_a_window_equals_full_on_the_targets(grpo_run, windowed):
    batch, length = windowed
    assert length < batch["input_ids"].shape[1] - 1  # the window really is narrower than the row
    lp = np.asarray(steps.compute_logprobs(grpo_run["ref_model_init"], batch, window=length))
    mask = batch["response_mask"] > 0
    np.testing.assert_allclose(lp[mask], grpo_run["old"][mask], atol=2e-6)
    cols = batch["window_start"][:, None] + np.arange(length)
    off = np.ones_like(mask)
    off[np.arange(len(cols))[:, None], np.clip(cols, 0, mask.shape[1] - 1)] = False
    np.testing.assert_array_equal(lp[off], 0.0)


def test_grpo_step_on_a_window_equals_plain_update(grpo_run, windowed, hf_config):
    batch, length = windowed
    batch = dict(grpo_run["batch"], window_start=batch["window_start"])
    model = _make_model(hf_config)
    state = steps.TrainState(model, optax.sgd(1.0))
    _, m = steps.grpo_step(
        state, {k: jnp.asarray(v) for k, v in batch.items()}, steps.GRPOConfig(num_micro_batches=2), window=length
    )
    assert float(m["loss"]) == pytest.approx(grpo_run["ref_loss"], rel=1e-4, abs=1e-6)
    for key in ("pg_loss", "kl", "entropy"):
        assert float(m[key]) == pytest.approx(grpo_run["ref_metrics"][key], rel=1e-4, abs=1e-6), key
    want = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(grpo_run["ref_model"], nnx.Param))}
    got = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-6, err_msg=str(k))
    with pytest.raises(KeyError, match="window_start"):
        steps.grpo_step(state, grpo_run["batch"], steps.GRPOConfig(), window=length)


def test_sft_step_on_a_window_equals_full(grpo_run, windowed, hf_config):
    batch, length = windowed
    mask = batch["loss_mask"]
    want = -(grpo_run["old"] * mask).sum() / mask[:, 1:].sum()  # from the fp32 forward
    after = []
    for w in (length, 0):
        model = _make_model(hf_config)
        _, m = steps.sft_step(steps.TrainState(model, optax.sgd(1.0)), batch, window=w)
        assert float(m["loss"]) == pytest.approx(want, rel=1e-5), w
        assert float(m["num_tokens"]) == mask[:, 1:].sum()
        after.append({k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
    for k in after[0]:
        np.testing.assert_allclose(after[0][k], after[1][k], rtol=1e-4, atol=2e-6, err_msg=str(k))


def _rows(data, rows):
    """Rows `rows` of the fixture as a batch of their own, trimmed to their longest row (right
    padding), with their images' patches."""
    rows = list(rows)
    width = int(data["attention_mask"][rows].sum(1).max())
    patches = np.prod(data["image_grid_thw"], axis=1)
    start = np.concatenate([[0], np.cumsum(patches)])
    out = {k: data[k][rows, :width] for k in ("input_ids", "attention_mask", "loss_mask")}
    out["pixel_values"] = np.concatenate([data["pixel_values"][start[i] : start[i + 1]] for i in rows])
    out["image_grid_thw"] = data["image_grid_thw"][rows]
    return out


def test_sft_step_on_parts_of_two_widths_equals_one_batch(grpo_run, data, hf_config):
    mask = data["loss_mask"]
    want = -(grpo_run["old"] * mask).sum() / mask[:, 1:].sum()  # from the fp32 forward
    short, long = _rows(data, range(4)), _rows(data, range(4, 8))
    assert short["input_ids"].shape[1] < long["input_ids"].shape[1] <= data["input_ids"].shape[1]
    after = []
    for batch in ((short, long), data):
        model = _make_model(hf_config)
        _, m = steps.sft_step(
            steps.TrainState(model, optax.sgd(1.0)), batch, window=(0, 0) if isinstance(batch, tuple) else 0
        )
        assert float(m["loss"]) == pytest.approx(want, rel=1e-5)
        assert float(m["num_tokens"]) == mask[:, 1:].sum()
        after.append({k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
    for k in after[0]:
        np.testing.assert_allclose(after[0][k], after[1][k], rtol=1e-4, atol=2e-6, err_msg=str(k))
    with pytest.raises(ValueError, match="2 batch parts but 3 windows"):
        steps.sft_step(steps.TrainState(_make_model(hf_config), optax.sgd(1.0)), (short, long), window=(0, 0, 0))


def test_a_frozen_tower_skips_its_backward_with_the_same_update(data, hf_config):
    """frozen_vision: image embeddings as constants. The update of every trained parameter equals
    the one with the tower's backward (whose gradients the frozen optimizer zeroes anyway); the
    tower stays as it was."""
    from grlhfv_jax.trainers import loop

    after, losses = [], []
    for skip in (False, True):
        model = _make_model(hf_config)
        before = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        state = steps.TrainState(model, loop.freeze_params(optax.sgd(1.0), ("visual",)), frozen_vision=skip)
        _, m = steps.sft_step(state, data, steps.SFTConfig(num_micro_batches=2))
        losses.append(float(m["loss"]))
        after.append({k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    moved = [k for k in after[0] if not np.array_equal(after[0][k], before[k])]
    assert moved and all(k[0] != "visual" for k in moved)
    for k in after[0]:
        np.testing.assert_allclose(after[1][k], after[0][k], rtol=1e-5, atol=1e-7, err_msg=str(k))
        if k[0] == "visual":
            np.testing.assert_array_equal(after[1][k], before[k])


def test_grpo_loss_goes_down(grpo_run):
    losses = grpo_run["losses"]
    assert losses[-1] < losses[0] - 1e-3, losses


# ------------------------------------------------------------------------------- BT, DPO, SFT


def _adamw(steps=5, lr=3e-3):
    return optim.make_optimizer(learning_rate=lr, total_steps=steps, warmup_steps=0, weight_decay=0.0)


def test_bt_rm_step(hf_config, data):
    model = _make_model(hf_config, scalar_head=True)
    # first-step loss from the model's own score(): independent of the step's micro-batching
    score = nnx.jit(lambda m, b: m.score(b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))
    r = np.asarray(score(model, data), np.float64)
    rc, rr = r[0::2], r[1::2]
    want = np.mean(np.log1p(np.exp(-(rc - rr)))) + 0.001 * np.mean(r**2)
    state = steps.TrainState(model, *_adamw())
    losses = []
    for _ in range(3):
        _, m = steps.bt_rm_step(state, data, steps.BTConfig(num_micro_batches=2))
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(want, rel=1e-4)
    assert losses[-1] < losses[0] and float(m["accuracy"]) >= 0.5
    assert "grad_norm" in m and "lr" in m


def test_dpo_step(hf_config, data, grpo_run):
    # reference log-probs: the tiny model at init == the GRPO fixture's pre-update log-probs
    old = grpo_run["old"]
    seq = steps.compute_sequence_logprobs(_make_model(hf_config), data, num_micro_batches=2)
    np.testing.assert_allclose(np.asarray(seq), (old * data["loss_mask"]).sum(1), rtol=1e-5, atol=1e-4)
    batch = dict(data, ref_logps=np.asarray(seq))
    state = steps.TrainState(_make_model(hf_config), *_adamw())
    losses = []
    for _ in range(3):
        _, m = steps.dpo_step(state, batch, steps.DPOConfig(beta=0.5, num_micro_batches=2))
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(math.log(2), rel=1e-4)  # policy == reference
    assert losses[-1] < losses[0] - 1e-3
    assert float(m["margin"]) > 0 and float(m["accuracy"]) > 0.5


def test_dpo_and_bt_steps_with_images_split_by_micro_batch(hf_config, data):
    """`loop.micro_batch_images` (each micro-batch runs the vision tower on its own images): the
    DPO step (tower trained) and the BT RM step (tower frozen) give the losses and SGD updates of
    the whole-batch layout. (Reference log-probs with it: test_shared_prompt.py.)"""
    from grlhfv_jax.trainers import loop

    split = loop.micro_batch_images(_make_model(hf_config), data, 2)
    assert "pixel_values" not in split
    ref = np.linspace(-30.0, -20.0, data["input_ids"].shape[0]).astype(np.float32)
    for name, make, step, cfg, frozen in (
        ("dpo", lambda: _make_model(hf_config), steps.dpo_step, steps.DPOConfig(beta=0.5, num_micro_batches=2), False),
        (
            "bt, frozen tower",
            lambda: _make_model(hf_config, scalar_head=True),
            steps.bt_rm_step,
            steps.BTConfig(num_micro_batches=2),
            True,
        ),
    ):
        init = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(make(), nnx.Param))}
        runs = []
        for bb in (data, split):
            model = make()
            tx = loop.freeze_params(optax.sgd(1.0), ("visual",)) if frozen else optax.sgd(1.0)
            _, m = step(steps.TrainState(model, tx, frozen_vision=frozen), dict(bb, ref_logps=ref), cfg)
            runs.append(
                (float(m["loss"]), {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
            )
        (l1, p1), (l2, p2) = runs
        assert l2 == pytest.approx(l1, rel=1e-5), name
        assert any(k[0] == "visual" and np.max(np.abs(p1[k] - init[k])) > 1e-6 for k in p1) != frozen, name
        for k in p1:
            np.testing.assert_allclose(p2[k], p1[k], rtol=1e-4, atol=2e-6, err_msg=f"{name}: {k}")


def test_sft_step_bf16_compute_fp32_params(hf_config, data, grpo_run):
    old = grpo_run["old"]
    mask = data["loss_mask"]
    want = -(old * mask).sum() / mask[:, 1:].sum()
    model = _make_model(hf_config, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    state = steps.TrainState(model, *_adamw(lr=1e-2))
    losses = []
    for _ in range(3):
        _, m = steps.sft_step(state, data, steps.SFTConfig(num_micro_batches=2))
        losses.append(float(m["loss"]))
    assert losses[0] == pytest.approx(want, rel=2e-2)  # bf16 compute vs the fp32 forward
    assert losses[-1] < losses[0] - 0.05
    assert float(m["num_tokens"]) == mask[:, 1:].sum()
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_step_input_errors(grpo_run, data):
    state = grpo_run["state"]
    with pytest.raises(KeyError, match="old_logp"):
        steps.grpo_step(state, {k: data[k] for k in ("input_ids", "attention_mask", "response_mask")})
    with pytest.raises(ValueError, match="num_micro_batches=3"):
        steps.sft_step(state, data, steps.SFTConfig(num_micro_batches=3))
    with pytest.raises(ValueError, match="pairs"):
        steps.bt_rm_step(state, data, steps.BTConfig(num_micro_batches=8))


def test_logits_in_chunks_and_remat_policies_give_the_same_updates(grpo_run, windowed, hf_config, data):
    """A model with ``logits_chunk`` (the LM head in pieces of 3 columns: several pieces, the last
    padded) and remat ("dots": projections saved; "nothing"): GRPO on a window, SFT on every column
    and DPO's sequence log-probs equal the plain reference written in `grpo_run`."""
    batch, length = windowed
    assert length > 3
    gb = {k: jnp.asarray(v) for k, v in dict(grpo_run["batch"], window_start=batch["window_start"]).items()}
    want = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(grpo_run["ref_model"], nnx.Param))}
    for policy in ("dots", "nothing"):
        model = _make_model(hf_config, logits_chunk=3, remat=True, remat_policy=policy)
        assert model.config.logits_chunk == 3
        _, m = steps.grpo_step(
            steps.TrainState(model, optax.sgd(1.0)), gb, steps.GRPOConfig(num_micro_batches=2), window=length
        )
        assert float(m["loss"]) == pytest.approx(grpo_run["ref_loss"], rel=1e-4, abs=1e-6), policy
        assert float(m["entropy"]) == pytest.approx(grpo_run["ref_metrics"]["entropy"], rel=1e-4), policy
        got = {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=2e-6, err_msg=f"{policy} {k}")
    mask = data["loss_mask"]
    model = _make_model(hf_config, logits_chunk=3)
    seq = steps.compute_sequence_logprobs(model, data)
    np.testing.assert_allclose(np.asarray(seq), (grpo_run["old"] * mask).sum(1), rtol=1e-5, atol=1e-4)
    _, m = steps.sft_step(steps.TrainState(model, optax.sgd(1.0)), data)
    assert float(m["loss"]) == pytest.approx(-(grpo_run["old"] * mask).sum() / mask[:, 1:].sum(), rel=1e-5)
    with pytest.raises(ValueError, match="remat_policy 'some'"):
        _make_model(hf_config, remat=True, remat_policy="some")(jnp.array([[5, 6, 7]]))
