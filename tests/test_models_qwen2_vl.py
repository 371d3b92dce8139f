"""Qwen2-VL / Qwen2.5-VL in NNX against transformers' PyTorch models (tiny random configs, fp32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import tiny_models as tm
from grlhfv_jax.models import decode_position_ids, load_pretrained

TOL = 1e-4
BF16_TOL = 0.1  # bf16 compute vs fp32 torch, logits of size ~3 (measured ~0.045)

# three configs per family (text / vision overrides); see tiny_models for the defaults
CONFIGS = {
    "qwen2_vl": [
        dict(),  # GQA 4/2, untied
        dict(
            tie=True,
            text=dict(
                num_key_value_heads=4,
                rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 1e6},
            ),
        ),  # tied, MHA
        dict(
            text=dict(
                num_attention_heads=8,
                num_key_value_heads=2,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
            ),
            vision=dict(depth=1, num_heads=2),
        ),
    ],
    "qwen2_5_vl": [
        dict(),  # window 2x2 merged units, full attn in block 1
        dict(tie=True, vision=dict(window_size=28, fullatt_block_indexes=[0, 2])),  # 1x1 windows
        dict(text=dict(num_key_value_heads=1), vision=dict(window_size=112, fullatt_block_indexes=[2])),
    ],
}
CASES = [(f, i) for f in CONFIGS for i in range(3)]
IDS = [f"{f}-{i}" for f, i in CASES]
# The checks that do not depend on the config's sizes run on the first config of each family (or of
# one family): parametrized over those cases only, through the module-scoped `pair` (no extra build).
FIRSTS = [c for c in CASES if c[1] == 0]
FIRST_IDS = [f"{f}-{i}" for f, i in FIRSTS]

# images: (t, h, w) patch grids; 8x12 and 6x4 split into several (uneven) windows for Qwen2.5
IMG_ROWS = [[[5, 6, 7, 8, 9], (1, 8, 12), [10, 11, 12, 13]], [[3, 4], (1, 6, 4), [14], (1, 4, 4), [15, 16, 17, 18]]]
ONE_IMG_ROWS = [[[20, 21], (1, 4, 6), [22, 23, 24]]]
TEXT_ROWS = [[[5, 6, 7, 8, 9, 10, 11]], [[12, 13, 14, 15]]]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def pair(request, tmp_path_factory):
    family, i = request.param
    path, tmodel = tm.build_and_save(tmp_path_factory.mktemp(f"{family}{i}"), family, seed=i, **CONFIGS[family][i])
    return family, i, path, tmodel, load_pretrained(path)


_fwd = nnx.jit(lambda m, x, a, pv, g: m(x, a, pv, g))


def _logits(model, b):
    """Jitted forward (one compile per config and batch shape; image_grid_thw traced)."""
    return np.asarray(_fwd(model, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))


def _close(ours, ref, mask, tol=TOL):
    diff = np.abs(ours - ref)[mask.astype(bool)].max()
    assert diff <= tol, diff
    return diff


def test_logit_parity(pair):
    family, i, path, tmodel, model = pair
    # row 0: one image; row 1: two images of different sizes; left padding
    for rows, side in [(IMG_ROWS, "left")]:
        b = tm.make_batch(rows, pad_side=side, seed=i)
        out = _logits(model, b)
        assert out.dtype == np.float32 and out.shape == b["input_ids"].shape + (tm.VOCAB,)
        ref = tm.torch_forward(tmodel, b).logits.numpy()
        _close(out, ref, b["attention_mask"])
    if i == 0:  # padding patches past the grid total (fixed shapes for jit) change nothing
        pv = np.concatenate([b["pixel_values"], np.random.default_rng(0).standard_normal((8, tm.PATCH_DIM))], 0)
        _close(_logits(model, dict(b, pixel_values=pv.astype(np.float32))), ref, b["attention_mask"])


def test_banded_vision_attention_parity(pair):
    """vision_block: each frame attends within a band of blocks, linear in the patches. IMG_ROWS has
    frames of 96, 24 and 16 patches: with blocks of 100 the 24-patch frame straddles two blocks and
    the last block is padding; logits equal transformers' (which attends per frame). vision_chunk:
    the query blocks one at a time (two pieces), the same logits."""
    family, i, path, tmodel, model = pair
    b = tm.make_batch(IMG_ROWS, pad_side="left", seed=i)
    ref = tm.torch_forward(tmodel, b).logits.numpy()
    _close(_logits(load_pretrained(path, vision_block=100), b), ref, b["attention_mask"])
    if i == 0:  # one config per family (Qwen2.5's has windows): the attention in pieces
        chunked = load_pretrained(path, vision_block=100, vision_chunk=100)
        assert chunked.config.vision_chunk == 100
        _close(_logits(chunked, b), ref, b["attention_mask"])
    if i == 0:  # a frame (96 patches) longer than the block: NaN, not a silently wrong answer
        assert np.isnan(_logits(load_pretrained(path, vision_block=64), b)[b["input_ids"] == tm.IMAGE]).all()


@pytest.mark.parametrize("pair", FIRSTS, ids=FIRST_IDS, indirect=True)
def test_text_left_padding_and_rope_index(pair):
    """Left-padded text-only batch (torch given its own get_rope_index positions, since its
    text-only default ignores padding) and rope_index == get_rope_index on every batch. Run on the
    first config of each family only: rope_index depends only on the merge size and token ids, the same
    in every config."""
    family, i, path, tmodel, model = pair
    b = tm.make_batch(TEXT_ROWS, pad_side="left")
    tpos, _ = tmodel.model.get_rope_index(
        torch.as_tensor(b["input_ids"], dtype=torch.long),
        torch.as_tensor(b["mm_token_type_ids"]),
        attention_mask=torch.as_tensor(b["attention_mask"]),
    )
    _close(_logits(model, b), tm.torch_forward(tmodel, b, position_ids=tpos).logits.numpy(), b["attention_mask"])
    jit_rope = jax.jit(model.rope_index)
    for rows in [IMG_ROWS, ONE_IMG_ROWS, TEXT_ROWS, IMG_ROWS[::-1]]:
        for side in ["left", "right"]:
            b = tm.make_batch(rows, pad_side=side)
            grid = None if b["image_grid_thw"] is None else torch.as_tensor(b["image_grid_thw"])
            ref, ref_d = tmodel.model.get_rope_index(
                torch.as_tensor(b["input_ids"], dtype=torch.long),
                torch.as_tensor(b["mm_token_type_ids"]),
                image_grid_thw=grid,
                attention_mask=torch.as_tensor(b["attention_mask"]),
            )
            for fn in (model.rope_index, jit_rope) if rows is IMG_ROWS else (jit_rope,):
                pos, d = fn(b["input_ids"], b["attention_mask"], b["image_grid_thw"])
                pos, d, m = np.asarray(pos), np.asarray(d), b["attention_mask"].astype(bool)
                np.testing.assert_array_equal(pos[:, m], ref.numpy()[:, m])
                assert (pos[:, ~m] == 1).all()
                n_pad = (~m).sum(1)
                np.testing.assert_array_equal(d, ref_d.numpy()[:, 0] - n_pad)  # slot-based deltas


@pytest.mark.parametrize("pair", FIRSTS, ids=FIRST_IDS, indirect=True)
def test_kv_cache_prefill_decode(pair):
    """Prefill a prompt then one-token steps at slot + rope_deltas == the full forward."""
    family, i, path, tmodel, model = pair
    for side in ["left"] + (["right"] if family == "qwen2_5_vl" else []):
        b = tm.make_batch(IMG_ROWS, pad_side=side)
        ids, am = b["input_ids"], b["attention_mask"]
        full = _logits(model, b)
        T = ids.shape[1]
        P = T - 3 if side == "left" else T  # right padding: decode after the padded prompt
        extra = 3 if side == "right" else 0
        if side == "right":
            ids = np.concatenate([ids, np.array([[30, 31, 32]] * 2, np.int32)], 1)
            am = np.concatenate([am, np.ones((2, 3), np.int32)], 1)
            full = _logits(model, dict(b, input_ids=ids, attention_mask=am))
        cache = model.init_cache(2, T + extra + 1)
        _, deltas = model.rope_index(ids[:, :P], am[:, :P], b["image_grid_thw"])
        prefill = nnx.jit(lambda m, x, a, pv, g, c: m(x, a, pv, g, cache=c, cache_index=0))
        lg, cache = prefill(model, ids[:, :P], am[:, :P], b["pixel_values"], b["image_grid_thw"], cache)
        outs = [np.asarray(lg)]
        step = nnx.jit(lambda m, x, a, c, s, p: m(x, a, cache=c, cache_index=s, position_ids=p))
        for s in range(P, ids.shape[1]):
            pos = decode_position_ids(jnp.full((2, 1), s), deltas)
            lg, cache = step(model, ids[:, s : s + 1], am[:, s : s + 1], cache, s, pos)
            outs.append(np.asarray(lg))
        c = model.config
        assert cache["k"].shape == (c.num_hidden_layers, 2, c.num_key_value_heads, T + extra + 1, c.head_dim)
        assert cache["v"].shape == (c.num_hidden_layers, 2, c.num_key_value_heads, c.head_dim, T + extra + 1)
        np.testing.assert_array_equal(np.asarray(cache["mask"])[:, : ids.shape[1]], am.astype(bool))
        _close(np.concatenate(outs, 1), full, am, 1e-5)
    with pytest.raises(ValueError, match="KV cache of 3 slots cannot take 2 tokens at slot 2"):
        model(np.full((1, 2), 5, np.int32), cache=model.init_cache(1, 3), cache_index=2)


@pytest.mark.parametrize("pair", [("qwen2_vl", 0)], ids=["qwen2_vl-0"], indirect=True)
def test_eager_with_image_embeds(pair):
    """Eager forward (the parity tests run jitted with image_grid_thw traced) from precomputed
    image embeddings."""
    family, i, path, tmodel, model = pair
    b = tm.make_batch(ONE_IMG_ROWS)
    # eager, with images encoded once and passed as image_embeds, vs torch
    emb = model.encode_images(b["pixel_values"], b["image_grid_thw"])
    assert emb.shape == (tm.image_tokens((1, 4, 6)), model.config.hidden_size)
    out = np.asarray(model(b["input_ids"], b["attention_mask"], image_grid_thw=b["image_grid_thw"], image_embeds=emb))
    _close(out, tm.torch_forward(tmodel, b).logits.numpy(), b["attention_mask"])


@pytest.mark.parametrize("pair", FIRSTS, ids=FIRST_IDS, indirect=True)
def test_bf16_compute(pair):
    family, i, path, tmodel, model = pair
    b = tm.make_batch(IMG_ROWS)
    ref = tm.torch_forward(tmodel, b).logits.numpy()
    m16 = load_pretrained(path, dtype=jnp.bfloat16, param_dtype=jnp.float32)  # bf16 compute, fp32 master
    assert m16.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
    out = _logits(m16, b)
    assert out.dtype == np.float32
    _close(out, ref, b["attention_mask"], BF16_TOL)


@pytest.mark.parametrize("pair", FIRSTS, ids=FIRST_IDS, indirect=True)
def test_scalar_head_and_hidden(pair):
    family, i, path, tmodel, model = pair
    b = tm.make_batch(IMG_ROWS, pad_side="right")
    rm = load_pretrained(path, scalar_head=True, rngs=nnx.Rngs(3))
    score = nnx.jit(lambda m, x, a, pv, g: m.score(x, a, pv, g))
    w = np.asarray(rm.score_head.kernel[...])[:, 0]
    hs = tm.torch_forward(tmodel, b, output_hidden_states=True).hidden_states[-1].numpy()
    last = b["attention_mask"].sum(1) - 1
    ref = hs[np.arange(2), last] @ w
    np.testing.assert_allclose(
        np.asarray(score(rm, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"])),
        ref,
        atol=TOL,
    )
    bl = tm.make_batch(IMG_ROWS, pad_side="left")
    np.testing.assert_allclose(
        np.asarray(score(rm, bl["input_ids"], bl["attention_mask"], bl["pixel_values"], bl["image_grid_thw"])),
        ref,
        atol=TOL,
    )


@pytest.mark.parametrize("pair", [("qwen2_5_vl", 0)], ids=["qwen2_5_vl-0"], indirect=True)
def test_remat_same_values_and_grads(pair):
    """Remat: the same loss and gradients, on one config (both families share the code path; the
    module-scoped `pair` of that config is the one the other tests use: no extra build)."""
    family, i, path, tmodel, model = pair
    b = tm.make_batch(ONE_IMG_ROWS)
    mr = load_pretrained(path, remat=True)

    def loss(m):
        return m(b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]).mean()

    l0, g0 = nnx.jit(nnx.value_and_grad(loss))(model)
    l1, g1 = nnx.jit(nnx.value_and_grad(loss))(mr)
    np.testing.assert_allclose(float(l1), float(l0), atol=1e-6)
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), atol=1e-5)


def test_every_param_has_logical_axes(pair):
    family, i, path, tmodel, model = pair
    names = {
        "vocab",
        "embed",
        "mlp",
        "q_heads",
        "kv_heads",
        "head_dim",
        "vision_embed",
        "vision_mlp",
        "vision_heads",
        "vision_patch",
        "norm",
        None,
    }
    n = 0
    for _, v in nnx.iter_graph(model):
        if isinstance(v, nnx.Param):
            axes = v.logical_axes
            assert len(axes) == v[...].ndim and set(axes) <= names, axes
            n += 1
    assert n == sum(1 for _ in tmodel.parameters())
