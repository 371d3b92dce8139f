"""Vision tower of Qwen2-VL (LayerNorm + GELU MLP blocks) and Qwen2.5-VL (RMSNorm + gated SiLU
MLP blocks, windowed attention except in `fullatt_block_indexes`), with the 2x2 patch merger.

Jittable with `image_grid_thw` as a traced [n_images, 3] array: attention stays within each
image frame (and, for windowed blocks, within each window) through masks built from per-patch
segment ids, so no data-dependent shapes appear. A window mask on the processor's patch order
is equivalent to transformers' permute-into-windows + reverse permutation (attention is
permutation-equivariant and the permutation moves whole merge units).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import Dense, LayerNorm, RMSNorm, activation, attention
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


class VisionAttention(nnx.Module):
    def __init__(self, cfg, rngs):
        E, dt, pdt = cfg.vision_hidden_size, cfg.dtype, cfg.param_dtype
        self.num_heads, self.dtype = cfg.vision_num_heads, dt
        self.qkv = Dense(E, 3 * E, axes=("vision_embed", "vision_heads"), bias=True, rngs=rngs, dtype=dt, param_dtype=pdt)
        self.proj = Dense(E, E, axes=("vision_heads", "vision_embed"), bias=True, rngs=rngs, dtype=dt, param_dtype=pdt)

    def __call__(self, x, cos, sin, mask):
        N, E = x.shape
        H = self.num_heads
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(N, 3, H, E // H), 1, 0)
        c, s = cos[:, None, :], sin[:, None, :]
        q = apply_rope(q.astype(jnp.float32), c, s).astype(self.dtype)
        k = apply_rope(k.astype(jnp.float32), c, s).astype(self.dtype)
        o = attention(q[None], k[None], v[None], mask[None], self.dtype)[0]         # [N, H, E / H]
        return self.proj(o.reshape(N, E))


class VisionMLP(nnx.Module):
    """Qwen2-VL: fc2(act(fc1 x)). Qwen2.5-VL: down(act(gate x) * up x), all with bias."""

    def __init__(self, cfg, rngs):
        E, I, dt, pdt = cfg.vision_hidden_size, cfg.vision_intermediate_size, cfg.dtype, cfg.param_dtype
        self.gated = cfg.is_qwen2_5
        self.act_name = cfg.vision_hidden_act   # a name, not a function: keeps the graphdef hashable / equal
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

    def __call__(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nnx.Module):
    """Conv3d with stride = kernel as a matmul on flattened (C, t, p, p) patches."""

    def __init__(self, cfg, rngs):
        self.proj = Dense(cfg.patch_dim, cfg.vision_hidden_size, axes=("vision_patch", "vision_embed"), bias=False,
                          rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)

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


def _block_call(block, x, cos, sin, mask):
    return block(x, cos, sin, mask)


class VisionTower(nnx.Module):
    def __init__(self, cfg, rngs):
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg, rngs)
        self.blocks = nnx.List([VisionBlock(cfg, rngs) for _ in range(cfg.vision_depth)])
        self.merger = PatchMerger(cfg, rngs)

    def __call__(self, pixel_values, image_grid_thw):
        """pixel_values [N, C*t*p*p], image_grid_thw [n, 3] -> merged embeddings [N / m^2, out_hidden]."""
        cfg = self.cfg
        N = pixel_values.shape[0]
        m = cfg.spatial_merge_size
        if N % (m * m):
            raise ValueError(f"pixel_values has {N} patches, not a multiple of spatial_merge_size**2 = {m * m}")
        window = cfg.window_size // m // cfg.patch_size if cfg.is_qwen2_5 else 0
        lay = patch_layout(image_grid_thw, N, m, window)
        cos, sin = vision_rope_cos_sin(lay["hpos"], lay["wpos"], cfg.vision_head_dim, cfg.vision_rope_theta)
        same = lay["frame"][:, None] == lay["frame"][None, :]
        # padding patches (frame -1) attend among themselves only; harmless and never read
        full_mask = same
        win_mask = same
        if window:
            win_mask = same & (lay["win_h"][:, None] == lay["win_h"][None]) & (lay["win_w"][:, None] == lay["win_w"][None])
        x = self.patch_embed(pixel_values)
        call = nnx.remat(_block_call) if cfg.remat else _block_call
        for i, blk in enumerate(self.blocks):
            mask = full_mask if (not window or i in cfg.fullatt_block_indexes) else win_mask
            x = call(blk, x, cos, sin, mask)
        return self.merger(x)
