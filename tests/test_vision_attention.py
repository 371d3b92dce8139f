"""The vision tower's per-frame attention (`banded_attention`), whole and in pieces of query blocks,
against dense masked attention written in numpy (float64): values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grlhfv_jax.models.qwen2_vl.vision import banded_attention

N, H, D, BLOCK = 37, 2, 4, 8  # 5 blocks, the last one part padding
FRAMES = [8, 3, 7, 8, 5, 6]  # contiguous segments, none longer than a block; 37 patches
WIN = np.array([0, 1] * 18 + [0])  # a second id: patches attend within (frame, window)


def _segments():
    frame = np.repeat(np.arange(len(FRAMES)), FRAMES)
    assert frame.shape == (N,)
    return frame


def _dense_reference(q, k, v, allowed, w):
    """o = softmax(q k^T / sqrt(D) over allowed keys) v per head, and the gradients of sum(o * w)."""
    s = np.einsum("nhd,mhd->hnm", q, k) / np.sqrt(D)
    s = np.where(allowed[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("hnm,mhd->nhd", p, v)
    dp = np.einsum("nhd,mhd->hnm", w, v)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    dq = np.einsum("hnm,mhd->nhd", ds, k) / np.sqrt(D)
    dk = np.einsum("hnm,nhd->mhd", ds, q) / np.sqrt(D)
    dv = np.einsum("hnm,nhd->mhd", p, w)
    return o, (dq, dk, dv)


@pytest.mark.parametrize("pieces", [0, 1, 2, 5])
@pytest.mark.parametrize("two_ids", [False, True])
def test_banded_attention_matches_dense_reference(pieces, two_ids):
    """pieces 0: all 5 blocks at once; 1: one block a piece; 2: three pieces, the last half padding
    blocks; 5: one piece of all. Values and gradients equal dense masked attention."""
    rng = np.random.default_rng(3)
    q, k, v, w = (rng.standard_normal((N, H, D)) for _ in range(4))
    frame = _segments()
    ids = (frame, WIN) if two_ids else (frame,)
    allowed = frame[:, None] == frame[None, :]
    if two_ids:
        allowed &= WIN[:, None] == WIN[None, :]
    o_ref, g_ref = _dense_reference(q, k, v, allowed, w)

    def loss(q, k, v):
        o = banded_attention(q, k, v, tuple(jnp.asarray(a) for a in ids), BLOCK, jnp.float32, pieces)
        return jnp.sum(o * w), o

    (_, o), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v))
    )
    np.testing.assert_allclose(np.asarray(o), o_ref, atol=2e-5)
    for name, g, r in zip("qkv", grads, g_ref):
        np.testing.assert_allclose(np.asarray(g), r, atol=2e-5, err_msg=f"d{name}")


def test_pieces_bound_the_scores_memory():
    """The point of pieces: XLA's temporary memory of the forward + backward is bounded by one
    piece's scores. 64 blocks of 64 patches, 4 heads: all at once holds several float32 score
    buffers of 4,096 x 4 x 192 (12.6 MB each); one block a piece needs under a quarter of that."""
    n, h, d, block = 4096, 4, 8, 64
    frame = jnp.asarray(np.repeat(np.arange(n // block), block))
    x = jax.ShapeDtypeStruct((n, h, d), jnp.float32)

    def temp(pieces):
        def loss(q, k, v):
            return jnp.sum(banded_attention(q, k, v, (frame,), block, jnp.float32, pieces))

        c = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
        return c.memory_analysis().temp_size_in_bytes

    whole, pieces = temp(0), temp(1)
    assert whole > 12.6e6, whole
    assert pieces < whole / 4, (pieces, whole)


def test_sampler_encodes_images_of_one_grid_a_piece_at_a_time():
    """`engine._encode_same_size` with the model's vision_chunk = one image's patches: 5 images in
    pieces of one (lax.map) give each image's own embeddings, and XLA's temporary memory is that of
    about one image, not five (all five at once without vision_chunk)."""
    import sys
    from pathlib import Path

    from flax import nnx

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_models as tm
    from grlhfv_jax import models
    from grlhfv_jax.rollout import engine

    hf = tm.tiny_hf_config("qwen2_vl").to_dict()
    n, side = 5, 32  # 1,024 patches an image: its attention scores dominate the memory
    rng = np.random.default_rng(0)
    pv = rng.standard_normal((n, side * side, tm.PATCH_DIM)).astype(np.float32)
    grid = np.tile([[1, side, side]], (n, 1)).astype(np.int32)
    temps = {}
    for chunk in (0, side * side):
        model = models.from_config(hf, rngs=nnx.Rngs(0), vision_chunk=chunk)
        graphdef, state = nnx.split(model)
        out = np.asarray(engine._encode_same_size(graphdef, state, jnp.asarray(pv), jnp.asarray(grid)))
        for i in range(n):  # each image alone through the model's tower (parity-tested vs transformers)
            want = np.asarray(model.encode_images(jnp.asarray(pv[i]), jnp.asarray(grid[i : i + 1])))
            np.testing.assert_allclose(out[i], want, atol=2e-5, err_msg=f"chunk {chunk}, image {i}")
        temps[chunk] = (
            engine._encode_same_size.lower(graphdef, state, jnp.asarray(pv), jnp.asarray(grid))
            .compile()
            .memory_analysis()
            .temp_size_in_bytes
        )
    assert temps[side * side] < 0.5 * temps[0], temps


@pytest.mark.parametrize("chunk", [0, 64])
def test_the_tower_splits_its_patches_over_the_devices(chunk):
    """A model on a mesh of 8 devices (fsdp 8) runs its vision tower with each block's queries split
    over the devices (`VisionTower(mesh=)`): the embeddings and the gradient of the model's one
    device, and XLA's temporary memory per device of the tower's forward + gradient well under one
    device's (3 images of 64 patches: 3 blocks, split across blocks; without the split every
    device ran all of them: 296 vs 263 MB measured at a larger size)."""
    import sys
    from pathlib import Path

    from flax import nnx

    from grlhfv_jax import models, sharding

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_models as tm

    cfg = tm.tiny_hf_config("qwen2_vl").to_dict()
    cfg["vision_config"].update(depth=1, embed_dim=32, num_heads=2, mlp_ratio=2)
    grid = np.asarray([(1, 8, 8)] * 3)
    out = {}
    for devices in (1, 8):
        model = models.from_config(cfg, rngs=nnx.Rngs(0), vision_block=64, vision_chunk=chunk)
        pv = np.random.default_rng(0).standard_normal((192, model.config.patch_dim)).astype(np.float32)
        if devices > 1:
            sharding.shard_model(model, sharding.make_mesh((1, devices, 1)))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p, pv):
            return jnp.sum(nnx.merge(graphdef, p, rest).encode_images(pv, jnp.asarray(grid)) ** 2)

        f = jax.jit(jax.value_and_grad(loss))
        temp = f.lower(params, pv).compile().memory_analysis().temp_size_in_bytes
        value, grads = f(params, pv)
        out[devices] = (temp, float(value), np.asarray(grads["visual"]["blocks"][0]["attn"]["qkv"]["kernel"][...]))
    assert out[8][1] == pytest.approx(out[1][1], rel=1e-6)
    np.testing.assert_allclose(out[8][2], out[1][2], rtol=1e-5, atol=1e-7)
    assert out[8][0] < 0.5 * out[1][0], (out[1][0], out[8][0])
