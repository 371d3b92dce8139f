"""Vision tower of Qwen2-VL (LayerNorm + GELU MLP blocks) and Qwen2.5-VL (RMSNorm + gated SiLU
MLP blocks, windowed attention except in `fullatt_block_indexes`), with the 2x2 patch merger.

Jittable with `image_grid_thw` as a traced [n_images, 3] array: attention stays within each
image frame (and, for windowed blocks, within each window) through masks built from per-patch
segment ids, so no data-dependent shapes appear. Dense ([N, N] mask over all N patches of a call:
quadratic in the number of images) unless `VLConfig.vision_block` > 0: then banded
(`banded_attention`, linear in N; exact when no frame has more patches than the block), and with
`VLConfig.vision_chunk` > 0 run that many query patches at a time (bounded scores, also in the backward). A window mask on the processor's patch order
is equivalent to transformers' permute-into-windows + reverse permutation (attention is
permutation-equivariant and the permutation moves whole merge units).
With `VLConfig.scan_vision` the blocks are stacked [depth, ...] and run by one `jax.lax.scan` (one
block's program to compile instead of depth), each block's kind (windowed / full attention) a
scanned flag that selects its mask inside the loop body.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ... import sharding
from ..layers import Dense, LayerNorm, RMSNorm, activation, attention, remat, stack_layers
from .rope import apply_rope, vision_rope_cos_sin


def patch_layout(image_grid_thw, num_patches: int, spatial_merge_size: int, window: int = 0):
    """Per-patch metadata for `num_patches` patches in the processor's order.

    Returns dict of [N] int32 arrays: frame (global frame id, -1 for padding patches past the
    grid total), hpos / wpos (patch row / column in its image), win_h / win_w (window of the
    merged grid, `window` merged units per side; 0 = no windows)."""
    grid = jnp.asarray(image_grid_thw).astype(jnp.int32)
    m = spatial_merge_size
    t, h, w = grid[:, 0], grid[:, 1], grid[:, 2]
    n = t * h * w
    img = jnp.repeat(jnp.arange(grid.shape[0], dtype=jnp.int32), n, total_repeat_length=num_patches)
    idx = jnp.arange(num_patches, dtype=jnp.int32)
    local = idx - (jnp.cumsum(n) - n)[img]
    hw = (h * w)[img]
    frame = (jnp.cumsum(t) - t)[img] + local // hw
    frame = jnp.where(idx < jnp.sum(n), frame, -1)
    rr = local % hw
    block, within = rr // (m * m), rr % (m * m)
    wb = (w // m)[img]
    bh, bw = block // wb, block % wb
    out = dict(frame=frame, hpos=bh * m + within // m, wpos=bw * m + within % m)
    if window:
        out["win_h"], out["win_w"] = bh // window, bw // window
    return out


def banded_attention(q, k, v, ids, block: int, dtype, pieces: int = 0, mesh=None):
    """Attention of N patches among those with equal ids (per image frame, or window), linear in N.

    q, k, v [N, H, D]; ids: a tuple of [N] int arrays, a patch attends to the patches equal to it in
    every one. The patches are cut into blocks of `block`; block i attends to blocks i-1, i, i+1,
    which hold every patch of its segments when no segment is longer than `block` patches and
    segments are contiguous (frames are; a window lies inside its frame). Then this equals dense
    masked attention (the masked-out keys have probability 0 in both). Cost N x 3 x block instead
    of N x N. Returns [N, H, D].

    pieces > 0: the query blocks run `pieces` at a time (a `jax.lax.map` of `jax.checkpoint`ed
    pieces), so one piece's float32 scores, pieces x block x H x 3 block, are live instead of all
    N x H x 3 block, in the forward and in the backward (which recomputes each piece's scores from
    its q, k, v). Same values; the memory of a trained tower (VLConfig.vision_chunk).

    mesh: each block's queries (with pieces: each piece's) are split over the mesh's row axes
    (`sharding.constrain_split`), so every device computes its share of every block's scores, whatever the
    number of blocks (the keys and values of the band are gathered); None: as placed."""
    N, H, D = q.shape
    nb = -(-N // block)
    pad = nb * block - N

    def blocks(x, fill):
        x = jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x
        return x.reshape((nb, block) + x.shape[1:])

    def band(x, fill):  # [nb, block, ...] -> [nb, 3 * block, ...]: blocks i-1, i, i+1
        edge = jnp.full((1,) + x.shape[1:], fill, x.dtype)
        prev = jnp.concatenate([edge, x[:-1]])
        nxt = jnp.concatenate([x[1:], edge])
        return jnp.concatenate([prev, x, nxt], axis=1)

    shard = lambda x, dim: sharding.constrain_split(x, dim, mesh)  # noqa: E731  (a block's queries over the devices)
    qb = blocks(q, 0)
    kb, vb = band(blocks(k, 0), 0), band(blocks(v, 0), 0)
    mask = None
    for i, a in enumerate(ids):
        # padding rows: their own id (-2), so every query row sees at least itself; edges: -3, never equal
        aq = blocks(a.astype(jnp.int32), -2)
        ak = band(aq, -3)
        eq = aq[:, :, None] == ak[:, None, :]
        mask = eq if mask is None else mask & eq
    if not pieces or pieces >= nb:
        o = attention(shard(qb, 1), kb, vb, shard(mask, 1), dtype)  # [nb, block, H, D]
        return o.reshape(nb * block, H, D)[:N]
    n_pieces = -(-nb // pieces)
    extra = n_pieces * pieces - nb  # padding blocks: no key allowed (uniform weights), never read

    def split(x):
        x = jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)]) if extra else x
        return x.reshape((n_pieces, pieces) + x.shape[1:])

    piece = jax.checkpoint(lambda a: attention(a[0], a[1], a[2], a[3], dtype))
    o = jax.lax.map(
        piece, (shard(split(qb), 2), split(kb), split(vb), shard(split(mask), 2))
    )  # [n_pieces, pieces, block, H, D]
    return o.reshape(n_pieces * pieces * block, H, D)[:N]


class VisionAttention(nnx.Module):
    def __init__(self, cfg, rngs):
        E, dt, pdt = cfg.vision_hidden_size, cfg.dtype, cfg.param_dtype
        self.num_heads, self.dtype = cfg.vision_num_heads, dt
        self.qkv = Dense(
            E, 3 * E, axes=("vision_embed", "vision_heads"), bias=True, rngs=rngs, dtype=dt, param_dtype=pdt
        )
        self.proj = Dense(E, E, axes=("vision_heads", "vision_embed"), bias=True, rngs=rngs, dtype=dt, param_dtype=pdt)

    def __call__(self, x, cos, sin, mask, block: int = 0, pieces: int = 0, mesh=None):
        """mask: [N, N] bool (dense), or with `block` > 0 a tuple of [N] segment ids (`banded_attention`,
        `pieces` query blocks at a time, each block's queries over `mesh`'s row axes)."""
        N, E = x.shape
        H = self.num_heads
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(N, 3, H, E // H), 1, 0)
        c, s = cos[:, None, :], sin[:, None, :]
        q = apply_rope(q.astype(jnp.float32), c, s).astype(self.dtype)
        k = apply_rope(k.astype(jnp.float32), c, s).astype(self.dtype)
        if block:
            o = banded_attention(q, k, v, mask, block, self.dtype, pieces, mesh)  # [N, H, E / H]
        else:
            o = attention(q[None], k[None], v[None], mask[None], self.dtype)[0]
        return self.proj(o.reshape(N, E))


class VisionMLP(nnx.Module):
    """Qwen2-VL: fc2(act(fc1 x)). Qwen2.5-VL: down(act(gate x) * up x), all with bias."""

    def __init__(self, cfg, rngs):
        E, I, dt, pdt = cfg.vision_hidden_size, cfg.vision_intermediate_size, cfg.dtype, cfg.param_dtype
        self.gated = cfg.is_qwen2_5
        self.act_name = cfg.vision_hidden_act  # a name, not a function: keeps the graphdef hashable / equal
        kw = dict(bias=True, rngs=rngs, dtype=dt, param_dtype=pdt)
        if self.gated:
            self.gate_proj = Dense(E, I, axes=("vision_embed", "vision_mlp"), **kw)
            self.up_proj = Dense(E, I, axes=("vision_embed", "vision_mlp"), **kw)
            self.down_proj = Dense(I, E, axes=("vision_mlp", "vision_embed"), **kw)
        else:
            self.fc1 = Dense(E, I, axes=("vision_embed", "vision_mlp"), **kw)
            self.fc2 = Dense(I, E, axes=("vision_mlp", "vision_embed"), **kw)

    def __call__(self, x):
        act = activation(self.act_name)
        if self.gated:
            return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))
        return self.fc2(act(self.fc1(x)))


def _norm(cfg, dim):
    cls = RMSNorm if cfg.is_qwen2_5 else LayerNorm
    return cls(dim, eps=1e-6, dtype=cfg.dtype, param_dtype=cfg.param_dtype)


class VisionBlock(nnx.Module):
    def __init__(self, cfg, rngs):
        self.norm1 = _norm(cfg, cfg.vision_hidden_size)
        self.norm2 = _norm(cfg, cfg.vision_hidden_size)
        self.attn = VisionAttention(cfg, rngs)
        self.mlp = VisionMLP(cfg, rngs)

    def __call__(self, x, cos, sin, mask, block: int = 0, pieces: int = 0, mesh=None):
        x = x + self.attn(self.norm1(x), cos, sin, mask, block, pieces, mesh)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nnx.Module):
    """Conv3d with stride = kernel as a matmul on flattened (C, t, p, p) patches."""

    def __init__(self, cfg, rngs):
        self.proj = Dense(
            cfg.patch_dim,
            cfg.vision_hidden_size,
            axes=("vision_patch", "vision_embed"),
            bias=False,
            rngs=rngs,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )

    def __call__(self, pixel_values):
        return self.proj(pixel_values)


class PatchMerger(nnx.Module):
    def __init__(self, cfg, rngs):
        E, m = cfg.vision_hidden_size, cfg.spatial_merge_size
        kw = dict(bias=True, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.ln_q = _norm(cfg, E)
        self.mlp_0 = Dense(E * m * m, E * m * m, axes=(None, "vision_mlp"), **kw)
        self.mlp_2 = Dense(E * m * m, cfg.vision_out_hidden_size, axes=("vision_mlp", "embed"), **kw)
        self.unit = m * m

    def __call__(self, x):
        x = self.ln_q(x)
        x = x.reshape(x.shape[0] // self.unit, -1)
        return self.mlp_2(jax.nn.gelu(self.mlp_0(x), approximate=False))


def _block_call(block, x, cos, sin, mask, band=0, pieces=0, mesh=None):
    return block(x, cos, sin, mask, band, pieces, mesh)


class VisionTower(nnx.Module):
    """Patch embedding, `vision_depth` blocks, merger. ``blocks``: an nnx.List of `VisionBlock`s, or
    with ``cfg.scan_vision`` one VisionBlock whose parameters are stacked [depth, ...] (logical axis
    "layers", replicated) and run by a `jax.lax.scan`. Either way the same random initial weights
    for the same rngs and the same values."""

    def __init__(self, cfg, rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, rngs)
        blocks = [VisionBlock(cfg, rngs) for _ in range(cfg.vision_depth)]
        self.blocks = stack_layers(blocks) if cfg.scan_vision else nnx.List(blocks)
        self.merger = PatchMerger(cfg, rngs)

    def __call__(self, pixel_values, image_grid_thw, mesh=None):
        """pixel_values [N, C*t*p*p], image_grid_thw [n, 3] -> merged embeddings [N / m^2, out_hidden].
        mesh: the patches are split over its row axes (`sharding.constrain_split`: each device
        computes its share of every block and attention piece), else as the inputs are placed."""
        cfg = self.cfg
        N = pixel_values.shape[0]
        m = cfg.spatial_merge_size
        if N % (m * m):
            raise ValueError(f"pixel_values has {N} patches, not a multiple of spatial_merge_size**2 = {m * m}")
        window = cfg.window_size // m // cfg.patch_size if cfg.is_qwen2_5 else 0
        lay = patch_layout(image_grid_thw, N, m, window)
        cos, sin = vision_rope_cos_sin(lay["hpos"], lay["wpos"], cfg.vision_head_dim, cfg.vision_rope_theta)
        # padding patches (frame -1) attend among themselves only; harmless and never read
        band = cfg.vision_block if 0 < cfg.vision_block < N else 0
        # query blocks per attention piece: vision_chunk patches, at least one block (0: all at once)
        pieces = max(cfg.vision_chunk // band, 1) if band and cfg.vision_chunk else 0
        if band:  # per frame (per window), linear in N: segment ids, not an [N, N] mask
            full_mask = (lay["frame"],)
            win_mask = (lay["frame"], lay["win_h"], lay["win_w"]) if window else full_mask
        else:
            same = lay["frame"][:, None] == lay["frame"][None, :]
            full_mask = win_mask = same
            if window:
                win_mask = (
                    same & (lay["win_h"][:, None] == lay["win_h"][None]) & (lay["win_w"][:, None] == lay["win_w"][None])
                )
        stream = lambda x: sharding.constrain_split(x, 0, mesh)  # noqa: E731
        x = stream(self.patch_embed(pixel_values))

        def call(blk, x, mask):
            f = lambda b, h, c, s_, mk: _block_call(b, h, c, s_, mk, band, pieces, mesh)
            return remat(f, cfg)(blk, x, cos, sin, mask)

        if cfg.scan_vision:
            x = self._scan_blocks(call, stream, x, full_mask, win_mask, window)
        else:
            for i, blk in enumerate(self.blocks):
                mask = full_mask if (not window or i in cfg.fullatt_block_indexes) else win_mask
                x = stream(call(blk, x, mask))
        if band:  # a frame longer than the block would have lost keys: NaN, never a silent error
            grid = jnp.asarray(image_grid_thw)
            too_long = jnp.max(grid[:, 1] * grid[:, 2]) > band
            x = jnp.where(too_long, jnp.nan, x)
        return self.merger(x)

    def _scan_blocks(self, call, stream, x, full_mask, win_mask, window):
        """The stacked blocks (``cfg.scan_vision``) under one `jax.lax.scan`: x [N, E] -> [N, E].
        One program serves both kinds of block: a scanned flag [depth] bool (block i in
        ``fullatt_block_indexes``) selects the mask in the body. Dense: the [N, N] full or window
        mask. Banded: 3 segment ids (frame, win_h, win_w), the window ids 0 in a full block (every
        patch's equal, so the frames alone mask, as (frame,) does). ``call``: one block,
        under remat when the config asks; ``stream``: the per-block sharding constraint."""
        cfg = self.cfg
        graphdef, params = nnx.split(self.blocks)
        is_full = jnp.asarray([not window or i in cfg.fullatt_block_indexes for i in range(cfg.vision_depth)])

        def mask_of(full):
            if not window:
                return full_mask
            if isinstance(win_mask, tuple):  # banded: segment ids
                frame, win_h, win_w = win_mask
                return frame, jnp.where(full, 0, win_h), jnp.where(full, 0, win_w)
            return jnp.where(full, full_mask, win_mask)

        def body(x, xs):
            p, full = xs
            return stream(call(nnx.merge(graphdef, p), x, mask_of(full))), None

        x, _ = jax.lax.scan(body, x, (params, is_full))
        return x
