"""Rotary position math for Qwen2-VL / Qwen2.5-VL: M-RoPE position ids (`rope_index`), the
language model's sectioned cos/sin, and the vision tower's 2D rotary. Pure, jittable functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PAD_POSITION = 1  # position id given to padding tokens (as transformers' generate does)


def rope_index(input_ids, attention_mask, image_grid_thw, *, image_token_id: int, spatial_merge_size: int):
    """M-RoPE position ids, equal to transformers' `get_rope_index` on real tokens.

    input_ids [B, T] int, attention_mask [B, T] (1 = real token) or None,
    image_grid_thw [n_images, 3] int (patch grid per image, images in row-major order of their
    `<|image_pad|>` blocks) or None. Jittable: only the shapes are static.
    Returns (position_ids [3, B, T] int32, rope_deltas [B] int32); padding tokens get position 1.
    rope_deltas[b] = max position of row b + 1 - T, so a token appended in slot q >= T (KV cache)
    has position q + rope_deltas[b], left or right padding alike. This is transformers'
    mrope_position_deltas minus the row's padding count (the same without padding), because
    transformers counts decode positions over real tokens rather than slots.
    Text tokens count up by one; an image block of grid (t, h, w) gets positions
    start + (t_idx, h_idx, w_idx) on the merged grid, and the text after it starts at
    start + max(h, w) / merge.
    """
    input_ids = jnp.asarray(input_ids)
    B, T = input_ids.shape
    mask = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    r = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1  # index among real tokens
    if image_grid_thw is None or image_grid_thw.shape[0] == 0:
        pos = jnp.where(mask, r, PAD_POSITION).astype(jnp.int32)
        pos3 = jnp.broadcast_to(pos[None], (3, B, T))
        deltas = jnp.max(jnp.where(mask, pos, -1), axis=1) + 1 - T
        return pos3, deltas.astype(jnp.int32)

    grid = jnp.asarray(image_grid_thw).astype(jnp.int32)
    m = spatial_merge_size
    gt, gh, gw = grid[:, 0], grid[:, 1] // m, grid[:, 2] // m
    count = gt * gh * gw  # tokens per image
    span = jnp.maximum(gh, gw)  # positions used per image
    cum_count = jnp.cumsum(count)
    start_count = cum_count - count
    d = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(span - count)])  # [n+1]

    is_img = (input_ids == image_token_id) & mask
    flat = is_img.reshape(-1).astype(jnp.int32)
    g_incl = jnp.cumsum(flat).reshape(B, T)  # image tokens up to here
    g_excl = g_incl - is_img
    row_before = (g_incl[:, -1] - is_img.sum(axis=1)).astype(jnp.int32)  # image tokens in earlier rows
    n_row = jnp.searchsorted(cum_count, row_before, side="right")  # images in earlier rows
    # text token: every image started before it is complete
    n_done = jnp.searchsorted(cum_count, g_incl.reshape(-1), side="right").reshape(B, T)
    text_pos = r + d[n_done] - d[n_row][:, None]
    # image token: which image, and where inside it
    k = jnp.clip(jnp.searchsorted(cum_count, g_excl.reshape(-1), side="right").reshape(B, T), 0, grid.shape[0] - 1)
    j = g_excl - start_count[k]
    hw = gh[k] * gw[k]
    tt, hh, ww = j // hw, (j % hw) // gw[k], j % gw[k]
    start = (r - j) + d[k] - d[n_row][:, None]
    img_pos = jnp.stack([start + tt, start + hh, start + ww])
    pos = jnp.where(is_img[None], img_pos, text_pos[None])
    pos = jnp.where(mask[None], pos, PAD_POSITION).astype(jnp.int32)
    deltas = jnp.max(jnp.where(mask[None], pos, -1), axis=(0, 2)) + 1 - T
    return pos, deltas.astype(jnp.int32)


def decode_position_ids(slots, rope_deltas):
    """Positions of decoded tokens: slot + rope_deltas in all three sections.

    slots [B, T] or [T] int (cache slots of the new tokens), rope_deltas [B] -> [3, B, T] int32."""
    slots = jnp.asarray(slots, jnp.int32)
    if slots.ndim == 1:
        slots = slots[None]
    pos = slots + jnp.asarray(rope_deltas, jnp.int32)[:, None]
    return jnp.broadcast_to(pos[None], (3,) + pos.shape)


def mrope_cos_sin(position_ids, head_dim: int, theta: float, mrope_section, dtype):
    """cos, sin [B, T, head_dim] for M-RoPE. position_ids [3, B, T]; frequency i uses the
    t / h / w position according to `mrope_section` (sizes over head_dim / 2 frequencies)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [D/2]
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, D/2]
    sec = jnp.repeat(jnp.arange(3), jnp.asarray(mrope_section), total_repeat_length=head_dim // 2)
    freqs = jnp.einsum("sbtf,sf->btf", freqs, jax.nn.one_hot(sec, 3, dtype=jnp.float32).T)  # pick t/h/w
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
    """x [..., T, H, D]; cos/sin broadcastable to [..., T, 1, D]."""
    return x * cos + rotate_half(x) * sin


def vision_rope_cos_sin(hpos, wpos, head_dim: int, theta: float):
    """2D rotary for the vision tower. hpos, wpos [N] patch rows / columns -> cos, sin [N, head_dim]
    float32 (first half of the frequencies from the row, second from the column, then repeated)."""
    dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))  # [D/4]
    fh = hpos.astype(jnp.float32)[:, None] * inv_freq
    fw = wpos.astype(jnp.float32)[:, None] * inv_freq
    f = jnp.concatenate([fh, fw, fh, fw], axis=-1)
    return jnp.cos(f), jnp.sin(f)
