"""Qwen2-VL and Qwen2.5-VL in Flax NNX: vision tower + Qwen2 decoder (GQA with q/k/v bias,
RMSNorm, SwiGLU, M-RoPE), optional KV cache, optional scalar head.

Module and parameter names follow the hub checkpoints (`model.layers.0.self_attn.q_proj` ...),
so weights.py maps names mechanically.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ... import sharding
from .. import contract
from ..layers import Dense, Embed, RMSNorm, attention, remat, stack_layers
from .config import VLConfig, parse_hf_config
from .rope import apply_rope, mrope_cos_sin, rope_index
from .vision import VisionTower


def _concrete(x):
    """numpy value of x, or None when x is traced (inside jit)."""
    if x is None:
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


class Attention(nnx.Module):
    def __init__(self, cfg: VLConfig, rngs):
        H, D, nq, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.nq, self.nkv, self.D, self.dtype = nq, nkv, D, cfg.dtype
        self.q_proj = Dense(H, nq * D, axes=("embed", "q_heads"), bias=True, **kw)
        self.k_proj = Dense(H, nkv * D, axes=("embed", "kv_heads"), bias=True, **kw)
        self.v_proj = Dense(H, nkv * D, axes=("embed", "kv_heads"), bias=True, **kw)
        self.o_proj = Dense(nq * D, H, axes=("q_heads", "embed"), bias=False, **kw)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None, layer_index=None):
        """x [B, T, H]; mask [B, T, S]; kv_cache (k [B, Hkv, S, D], v [B, Hkv, D, S]) or None; with
        `layer_index` (scanned layers) kv_cache is every layer's (k [L, B, Hkv, S, D], v [L, ...]):
        this layer writes its new tokens at slot `layer_index` and reads that slot.
        Returns (out [B, T, H], (k, v) written cache or None)."""
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.nq, self.D)
        k = self.k_proj(x).reshape(B, T, self.nkv, self.D)
        v = self.v_proj(x).reshape(B, T, self.nkv, self.D)
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        q, k = apply_rope(q, c, s), apply_rope(k, c, s)
        if kv_cache is None:
            o, new = attention(q, k, v, mask, self.dtype), None
        else:  # the cache's layout lets the decode step's dots read it without a transpose
            ck, cv = kv_cache
            k, v = jnp.einsum("btkd->bktd", k).astype(ck.dtype), jnp.einsum("btkd->bkdt", v).astype(cv.dtype)
            if layer_index is None:
                ck = jax.lax.dynamic_update_slice(ck, k, (0, 0, cache_index, 0))
                cv = jax.lax.dynamic_update_slice(cv, v, (0, 0, 0, cache_index))
                new = (ck, cv)
            else:  # only the new tokens are written into the stacked cache (in place in a loop carry)
                zero = jnp.zeros((), jnp.int32)
                new = (
                    jax.lax.dynamic_update_slice(ck, k[None], (layer_index, zero, zero, cache_index, zero)),
                    jax.lax.dynamic_update_slice(cv, v[None], (layer_index, zero, zero, zero, cache_index)),
                )
                ck, cv = (jax.lax.dynamic_index_in_dim(a, layer_index, keepdims=False) for a in new)
            n = mask.shape[-1]  # slots to attend: all S, or the filled [0, n) when known statically
            o = attention(
                q, ck[:, :, :n].astype(self.dtype), cv[..., :n].astype(self.dtype), mask, self.dtype, cache_layout=True
            )
        return self.o_proj(o.reshape(B, T, self.nq * self.D)), new

    def shared_prompt(self, x, cos, sin, masks, shapes):
        """Attention for `Qwen2VL.shared_prompt_hidden`'s flat tokens: x [N, H] holds P prompts of
        Tp tokens, then P*G responses of R tokens (cos / sin [N, D]); masks (prompt [P, Tp, Tp],
        response [P*G, R, Tp + R]); shapes (P, G, Tp, R). Each response attends to its prompt's keys
        (computed once, repeated to its G rows) and to its own. Returns [N, H]."""
        P, G, Tp, R = shapes
        n = P * Tp
        c, s = cos[:, None, :], sin[:, None, :]
        q = apply_rope(self.q_proj(x).reshape(-1, self.nq, self.D), c, s)
        k = apply_rope(self.k_proj(x).reshape(-1, self.nkv, self.D), c, s)
        v = self.v_proj(x).reshape(-1, self.nkv, self.D)
        prompt = lambda a: a[:n].reshape(P, Tp, *a.shape[1:])
        resp = lambda a: a[n:].reshape(P * G, R, *a.shape[1:])
        op = attention(prompt(q), prompt(k), prompt(v), masks[0], self.dtype)
        kr = jnp.concatenate([jnp.repeat(prompt(k), G, axis=0), resp(k)], axis=1)
        vr = jnp.concatenate([jnp.repeat(prompt(v), G, axis=0), resp(v)], axis=1)
        o_r = attention(resp(q), kr, vr, masks[1], self.dtype)
        o = jnp.concatenate([op.reshape(n, -1), o_r.reshape(P * G * R, -1)], axis=0)
        return self.o_proj(o)


class MLP(nnx.Module):
    def __init__(self, cfg: VLConfig, rngs):
        H, I = cfg.hidden_size, cfg.intermediate_size
        kw = dict(bias=False, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.gate_proj = Dense(H, I, axes=("embed", "mlp"), **kw)
        self.up_proj = Dense(H, I, axes=("embed", "mlp"), **kw)
        self.down_proj = Dense(I, H, axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: VLConfig, rngs):
        kw = dict(eps=cfg.rms_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **kw)
        self.self_attn = Attention(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None, layer_index=None):
        a, new = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, cache_index, layer_index)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), new

    def shared_prompt(self, x, cos, sin, masks, shapes):
        """The layer on `Qwen2VL.shared_prompt_hidden`'s flat tokens x [N, H] (see
        `Attention.shared_prompt`): norms and MLP per token, attention by prompt."""
        x = x + self.self_attn.shared_prompt(self.input_layernorm(x), cos, sin, masks, shapes)
        return x + self.mlp(self.post_attention_layernorm(x))


def _layer_call(layer, x, cos, sin, mask, kv_cache, cache_index, layer_index=None):
    return layer(x, cos, sin, mask, kv_cache, cache_index, layer_index)


def _shared_layer_call(layer, x, cos, sin, masks, shapes):
    return layer.shared_prompt(x, cos, sin, masks, shapes)


class TextModel(nnx.Module):
    """Token embedding, decoder layers, final norm. ``layers``: an nnx.List of L `DecoderLayer`s,
    or with ``cfg.scan_layers`` one DecoderLayer whose parameters are stacked [L, ...] (run by a
    `jax.lax.scan`: one layer's program to compile instead of L). Either way the same random
    initial weights for the same rngs."""

    def __init__(self, cfg: VLConfig, rngs):
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )
        layers = [DecoderLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)]
        self.layers = stack_layers(layers) if cfg.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)


@dataclasses.dataclass(frozen=True)
class QwenImages(contract.ImageLayout):
    """Qwen-VL's image layout: one `pixel_values` row per patch ([N, C*t*p*p]), image_grid_thw the
    (t, h, w) patch grid, prod(t, h, w) / merge_size**2 `<|image_pad|>` tokens per image."""

    image_token_id: int
    merge_size: int

    def rows_per_image(self, image_grid_thw) -> np.ndarray:
        return np.prod(np.asarray(image_grid_thw).reshape(-1, 3), axis=1)

    def tokens_per_image(self, image_grid_thw) -> np.ndarray:
        return self.rows_per_image(image_grid_thw) // self.merge_size**2


class Qwen2VL(nnx.Module):
    """Qwen2-VL / Qwen2.5-VL for conditional generation (see docs/internal_api.md for the call).
    Follows `models.contract.VLModel` with both capabilities."""

    shared_prompt = True  # `shared_prompt_hidden`
    group_images = True  # `group_first_images`

    def __init__(self, config: VLConfig, *, rngs: nnx.Rngs, scalar_head: bool = False):
        if config.vision_out_hidden_size != config.hidden_size:
            raise ValueError(
                f"vision out_hidden_size {config.vision_out_hidden_size} != hidden_size {config.hidden_size}"
            )
        self.config = config
        self.visual = VisionTower(config, rngs)
        self.model = TextModel(config, rngs)
        kw = dict(rngs=rngs, dtype=config.dtype, param_dtype=config.param_dtype)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Dense(config.hidden_size, config.vocab_size, axes=("embed", "vocab"), bias=False, **kw)
        )
        self.score_head = Dense(config.hidden_size, 1, axes=("embed", None), bias=False, **kw) if scalar_head else None
        # the mesh the parameters are on (set by sharding.shard_model / load_pretrained): the
        # residual stream and the logits are constrained to it (sharding.ACTIVATION_RULES)
        self.activation_mesh = None

    def _constrain(self, x, axes):
        return sharding.constrain(x, axes, self.activation_mesh)

    # ----------------------------------------------------------------- helpers
    def rope_index(self, input_ids, attention_mask=None, image_grid_thw=None):
        """(position_ids [3, B, T] int32, rope_deltas [B] int32); see rope.rope_index."""
        return rope_index(
            input_ids,
            attention_mask,
            image_grid_thw,
            image_token_id=self.config.image_token_id,
            spatial_merge_size=self.config.spatial_merge_size,
        )

    def image_token_mask(self, input_ids):
        """[B, T] bool: the placeholder tokens that image embeddings replace (in row order)."""
        return jnp.asarray(input_ids) == self.config.image_token_id

    @property
    def image_layout(self) -> QwenImages:
        """The batch's image bookkeeping (`models.contract.ImageLayout`)."""
        return QwenImages(int(self.config.image_token_id), int(self.config.spatial_merge_size))

    def text_position_ids(self, positions):
        """1-D positions [B, T] of text tokens -> M-RoPE position_ids [3, B, T] int32 (all sections equal)."""
        positions = jnp.asarray(positions)
        return jnp.broadcast_to(positions[None], (3,) + positions.shape).astype(jnp.int32)

    def patch_unit(self) -> int:
        """Pixel rows of a batch are padded in multiples of this many patches (`processing.patch_bucket`):
        the vision attention block (one largest frame), else 64, rounded up to whole merge units
        (`merge_unit`). The padding contract of the tower: any count of pixel rows it is given is a
        multiple of `merge_unit`; a batch's rows are a multiple of this unit; `group_patch_rows` says
        how many rows the images of each group's first row take."""
        unit, merge = int(self.config.vision_block or 64), self.merge_unit()
        return -(-unit // merge) * merge

    def merge_unit(self) -> int:
        """Patches merged into one image token (spatial_merge_size**2): the tower encodes whole units."""
        return int(self.config.spatial_merge_size) ** 2

    def group_patch_rows(self, num_patches: int, group: int) -> int:
        """Static pixel rows of `group_first_images` for a batch of `num_patches` rows (its images
        and padding) in runs of `group` rows that repeat one prompt: ceil(num_patches / group)
        (the first rows' real patches are the batch's real patches / group), rounded up to whole
        merge units so the tower can encode them (e.g. 768 rows in runs of 5: 154 -> 156)."""
        rows = -(-int(num_patches) // int(group))
        return -(-rows // self.merge_unit()) * self.merge_unit()

    def group_first_images(self, input_ids, pixel_values, image_grid_thw, group: int):
        """The images of the first row of each run of `group` rows: (pixel_values
        [`group_patch_rows`(N, group), D], image_grid_thw [n / group, 3]), static sizes. For rows that repeat their prompt in runs of
        `group` (a prompt and its G sampled responses; `shared_prompt_hidden` with
        group_images=True): the vision tower then encodes each prompt's images once, not G times.
        Rows hold their images in row order (as `processing.collate` gives them); an image belongs
        to the row holding its first <|image_pad|> token. Patches past the grid total and grid
        rows of zeros (padding) are kept out; the output's own padding is zero grid rows and
        patches past its grid total."""
        G = int(group)
        pv, grid = jnp.asarray(pixel_values), jnp.asarray(image_grid_thw).astype(jnp.int32)
        N, n = pv.shape[0], grid.shape[0]
        if n % G:
            raise ValueError(f"group_first_images: {n} images do not split into runs of {G} rows")
        patches = jnp.prod(grid, axis=1)  # [n]
        tokens = patches // self.config.spatial_merge_size**2
        row_end = jnp.cumsum(jnp.sum(self.image_token_mask(input_ids), axis=1))  # [B]
        row = jnp.searchsorted(row_end, jnp.cumsum(tokens) - tokens, side="right")  # row of each image
        keep = (row % G == 0) & (patches > 0)
        img = jnp.nonzero(keep, size=n // G, fill_value=n)[0]
        grid_g = jnp.where((img < n)[:, None], grid[jnp.minimum(img, n - 1)], 0)
        owner = jnp.repeat(jnp.arange(n), patches, total_repeat_length=N)
        real = jnp.arange(N) < jnp.sum(patches)
        idx = jnp.nonzero(keep[owner] & real, size=self.group_patch_rows(N, G), fill_value=N)[0]
        return jnp.where((idx < N)[:, None], pv[jnp.minimum(idx, N - 1)], 0), grid_g  # padding rows: zeros

    def encode_images(self, pixel_values, image_grid_thw):
        """pixel_values [N, C*t*p*p] (as Qwen2VLImageProcessor), image_grid_thw [n, 3]
        -> image embeddings [N / merge^2, hidden] in the compute dtype."""
        pixel_values = jnp.asarray(pixel_values)
        if pixel_values.ndim != 2 or pixel_values.shape[1] != self.config.patch_dim:
            raise ValueError(f"pixel_values must be [num_patches, {self.config.patch_dim}], got {pixel_values.shape}")
        grid = _concrete(image_grid_thw)
        if grid is not None and int(np.prod(grid, axis=1).sum()) > pixel_values.shape[0]:
            raise ValueError(
                f"image_grid_thw covers {int(np.prod(grid, axis=1).sum())} patches but pixel_values "
                f"has {pixel_values.shape[0]}"
            )
        return self.visual(pixel_values, jnp.asarray(image_grid_thw), mesh=self.activation_mesh)

    def init_cache(self, batch: int, max_len: int, dtype=None):
        """Empty KV cache (compute dtype): k [L, B, Hkv, S, D], v [L, B, Hkv, D, S] (slots last:
        see layers.attention), mask [B, S] bool."""
        c = self.config
        lead = (c.num_hidden_layers, batch, c.num_key_value_heads)
        dt = dtype or c.dtype
        return {
            "k": jnp.zeros(lead + (max_len, c.head_dim), dt),
            "v": jnp.zeros(lead + (c.head_dim, max_len), dt),
            "mask": jnp.zeros((batch, max_len), bool),
        }

    def _check_images(self, input_ids, image_grid_thw, n_embeds):
        ids, grid = _concrete(input_ids), _concrete(image_grid_thw)
        if ids is None:
            return
        is_img = ids == self.config.image_token_id
        n_tok = int(is_img.sum())
        if n_embeds is None:
            if n_tok:
                raise ValueError(
                    f"input_ids hold {n_tok} <|image_pad|> tokens but no pixel_values / image_embeds given"
                )
            return
        if grid is not None:
            m2 = self.config.spatial_merge_size**2
            per_image = (np.prod(grid, axis=1) // m2).astype(int)
            starts = is_img & ~np.concatenate([np.zeros_like(is_img[:, :1]), is_img[:, :-1]], axis=1)
            n_blocks = int(starts.sum())
            if n_blocks != len(per_image):
                raise ValueError(
                    f"image count mismatch: image_grid_thw has {len(per_image)} images but input_ids "
                    f"hold {n_blocks} <|image_pad|> blocks"
                )
            if n_tok != int(per_image.sum()):
                raise ValueError(
                    f"image token mismatch: input_ids hold {n_tok} <|image_pad|> tokens but "
                    f"image_grid_thw gives {int(per_image.sum())} merged image tokens"
                )
        elif n_tok > n_embeds:
            raise ValueError(f"image token mismatch: {n_tok} <|image_pad|> tokens but {n_embeds} image embeddings")

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, image_embeds=None):
        """Token embeddings with the image embeddings scattered into the <|image_pad|> slots [B, T, H]."""
        x = self.model.embed_tokens(input_ids)
        if image_embeds is None and pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            n_embeds = jnp.shape(pixel_values)[0] // self.config.spatial_merge_size**2
        else:
            n_embeds = None if image_embeds is None else image_embeds.shape[0]
        self._check_images(input_ids, image_grid_thw, n_embeds)  # before running the vision tower
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.encode_images(pixel_values, image_grid_thw)
        if image_embeds is None:
            return x
        is_img = input_ids == self.config.image_token_id
        idx = jnp.cumsum(is_img.reshape(-1)).reshape(is_img.shape) - 1
        idx = jnp.clip(idx, 0, image_embeds.shape[0] - 1)
        return jnp.where(is_img[..., None], jnp.take(image_embeds.astype(x.dtype), idx, axis=0), x)

    # ----------------------------------------------------------------- forward
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        *,
        position_ids=None,
        cache=None,
        cache_index=None,
        image_embeds=None,
        return_hidden=False,
    ):
        cfg = self.config
        input_ids = jnp.asarray(input_ids).astype(jnp.int32)
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), bool)
        attention_mask = jnp.asarray(attention_mask).astype(bool)
        if image_grid_thw is not None:
            image_grid_thw = jnp.asarray(image_grid_thw).astype(jnp.int32)
        x = self.embed(input_ids, pixel_values, image_grid_thw, image_embeds)
        if position_ids is None:
            position_ids, _ = self.rope_index(input_ids, attention_mask, image_grid_thw)
            if cache is not None and cache_index is not None:
                # continuing a cached sequence without explicit positions: text-only rule
                # (offset by the real tokens already cached). Pass position_ids = slot + rope_deltas
                # when the cached prompt held images.
                prev = jnp.sum(cache["mask"] & (jnp.arange(cache["mask"].shape[1]) < cache_index), axis=1)
                position_ids = position_ids + prev.astype(jnp.int32)[None, :, None]
        cos, sin = mrope_cos_sin(jnp.asarray(position_ids), cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cfg.dtype)

        if cache is None:
            q_slot = jnp.arange(T)
            mask = attention_mask[:, None, :] & (q_slot[None, :] <= q_slot[:, None])[None]
            new_cache = None
        else:
            if cache_index is None:
                cache_index = 0
            # a Python int cache_index (prefill): only slots [0, cache_index + T) can be attended,
            # so attention reads just those; a traced one (decode loop): all S slots, masked
            S = cache_index + T if isinstance(cache_index, (int, np.integer)) else cache["mask"].shape[1]
            if S > cache["mask"].shape[1]:
                raise ValueError(
                    f"KV cache of {cache['mask'].shape[1]} slots cannot take {T} tokens at slot {cache_index}"
                )
            cache_index = jnp.asarray(cache_index, jnp.int32)
            cmask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, cache_index))
            q_slot = cache_index + jnp.arange(T)
            mask = cmask[:, None, :S] & (jnp.arange(S)[None, :] <= q_slot[:, None])[None]
            new_k, new_v = [], []

        stream = ("act_batch", "act_length", "act_embed")
        x = self._constrain(x, stream)
        call = remat(_layer_call, cfg)
        if cfg.scan_layers:
            x, new_cache = self._scan_layers(call, x, cos, sin, mask, cache, cache_index)
        else:
            for i, layer in enumerate(self.model.layers):
                kv = None if cache is None else (cache["k"][i], cache["v"][i])
                x, new = call(layer, x, cos, sin, mask, kv, cache_index)
                x = self._constrain(x, stream)
                if cache is not None:
                    new_k.append(new[0])
                    new_v.append(new[1])
            if cache is not None:  # in the layout it came in: stacked [L, ...] or a tuple of L layers
                per_layer = isinstance(cache["k"], (tuple, list))
                new_cache = {
                    "k": tuple(new_k) if per_layer else jnp.stack(new_k),
                    "v": tuple(new_v) if per_layer else jnp.stack(new_v),
                }
        h = self.model.norm(x)
        if cache is not None:
            new_cache["mask"] = cmask
        out = h if return_hidden else self.logits(h)
        return out if cache is None else (out, new_cache)

    def shared_prompt_hidden(
        self,
        input_ids,
        attention_mask,
        *,
        group: int,
        prompt_len: int,
        position_ids,
        image_embeds=None,
        group_images: bool = False,
    ):
        """Rows in runs of ``group`` that share their first ``prompt_len`` columns (a prompt and its
        G sampled responses, as GRPO trains them): the final hidden states ``[B, R, H]`` at columns
        ``prompt_len - 1 .. T - 2``, those whose logits predict the response columns
        ``prompt_len .. T - 1`` (R = T - prompt_len). Equal to
        ``self(..., return_hidden=True)[:, prompt_len - 1 : T - 1]``, with each prompt's columns
        run once per group instead of G times (the prompt's tokens attend only to the prompt).

        input_ids / attention_mask [B, T]; position_ids [3, B, T]; image_embeds as `__call__`
        (the images of all B rows, in row order; the prompt's come from its group's first row), or
        with `group_images` those of each group's first row only (`group_first_images`)."""
        cfg = self.config
        input_ids = jnp.asarray(input_ids).astype(jnp.int32)
        B, T = input_ids.shape
        G, Tp = int(group), int(prompt_len)
        if B % G or not 0 < Tp < T:
            raise ValueError(f"shared_prompt_hidden: {B} rows in groups of {G}, prompt_len {Tp} of {T} columns")
        P, R = B // G, T - Tp
        am = jnp.asarray(attention_mask).astype(bool)
        flat = lambda a: jnp.concatenate(
            [a[::G, :Tp].reshape((P * Tp,) + a.shape[2:]), a[:, Tp:].reshape((B * R,) + a.shape[2:])], axis=0
        )
        if group_images:  # the prompts' tokens with their images; the responses hold no image
            x = jnp.concatenate(
                [
                    self.embed(input_ids[::G, :Tp], image_embeds=image_embeds).reshape(P * Tp, -1),
                    self.embed(input_ids[:, Tp:]).reshape(B * R, -1),
                ],
                axis=0,
            )
        else:
            x = flat(self.embed(input_ids, image_embeds=image_embeds))
        pos = jnp.asarray(position_ids)
        cos, sin = mrope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, cfg.dtype)
        cos, sin = flat(cos), flat(sin)
        causal_p = jnp.arange(Tp)[None, :] <= jnp.arange(Tp)[:, None]
        mask_p = am[::G, None, :Tp] & causal_p[None]
        mask_r = am[:, None, :] & (jnp.arange(T)[None, :] <= (Tp + jnp.arange(R))[:, None])[None]
        call = remat(_shared_layer_call, cfg, static_argnums=(5,))
        if cfg.scan_layers:
            graphdef, params = nnx.split(self.model.layers)
            body = lambda x, p: (call(nnx.merge(graphdef, p), x, cos, sin, (mask_p, mask_r), (P, G, Tp, R)), None)  # noqa: E731
            x, _ = jax.lax.scan(body, x, params)
        else:
            for layer in self.model.layers:
                x = call(layer, x, cos, sin, (mask_p, mask_r), (P, G, Tp, R))
        h = self.model.norm(x)
        last_p = jnp.repeat(h[: P * Tp].reshape(P, Tp, -1)[:, -1:], G, axis=0)  # predicts column Tp
        return jnp.concatenate([last_p, h[P * Tp :].reshape(B, R, -1)[:, :-1]], axis=1)

    def _scan_layers(self, call, x, cos, sin, mask, cache, cache_index):
        """The stacked decoder layers (``config.scan_layers``) under one `jax.lax.scan`: x [B, T, H]
        -> (x, new cache {"k", "v"} stacked [L, ...] or None). ``call``: `_layer_call`, under remat
        when the config asks. A cache given as per-layer tuples is stacked first; the cache rides
        in the loop carry and each layer writes only its new tokens."""
        stream = ("act_batch", "act_length", "act_embed")
        graphdef, params = nnx.split(self.model.layers)
        if cache is None:

            def body(x, p):
                x, _ = call(nnx.merge(graphdef, p), x, cos, sin, mask, None, cache_index)
                return self._constrain(x, stream), None

            x, _ = jax.lax.scan(body, x, params)
            return x, None

        def body_cached(carry, xs):
            x, k, v = carry
            p, i = xs
            x, (k, v) = call(nnx.merge(graphdef, p), x, cos, sin, mask, (k, v), cache_index, i)
            return (self._constrain(x, stream), k, v), None

        stack = lambda a: jnp.stack(a) if isinstance(a, (tuple, list)) else a  # noqa: E731
        layers = jnp.arange(self.config.num_hidden_layers, dtype=jnp.int32)
        (x, k, v), _ = jax.lax.scan(body_cached, (x, stack(cache["k"]), stack(cache["v"])), (params, layers))
        return x, {"k": k, "v": v}

    def logits(self, h):
        """Final hidden states [..., H] -> float32 logits [..., V]."""
        dt = self.config.dtype
        w = (self.model.embed_tokens.weight[...].T if self.lm_head is None else self.lm_head.kernel[...]).astype(dt)
        out = jnp.dot(h.astype(dt), w, preferred_element_type=jnp.float32)
        if out.ndim >= 2:  # rows first, vocabulary last
            out = self._constrain(out, ("act_batch",) + (None,) * (out.ndim - 2) + ("act_vocab",))
        return out

    def score(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        *,
        image_embeds=None,
        position_ids=None,
    ):
        """Scalar reward [B] float32 read at the last real token of each row (either padding side)."""
        if self.score_head is None:
            raise ValueError("this model has no scalar head; build it with scalar_head=True")
        input_ids = jnp.asarray(input_ids)
        B, T = input_ids.shape
        mask = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        h = self(
            input_ids,
            mask,
            pixel_values,
            image_grid_thw,
            image_embeds=image_embeds,
            position_ids=position_ids,
            return_hidden=True,
        )
        last = T - 1 - jnp.argmax(mask[:, ::-1], axis=1)
        hl = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        w = self.score_head.kernel[...]
        return jnp.dot(hl.astype(jnp.float32), w.astype(jnp.float32))[:, 0]

    def score_hidden(self, h):
        """The scalar head on final hidden states ``[..., H]`` (from ``return_hidden=True``) -> float32 ``[...]``:
        `score` is this at each row's last real token; read at every token it is a per-token value head."""
        if self.score_head is None:
            raise ValueError("this model has no scalar head; build it with scalar_head=True")
        w = self.score_head.kernel[...]
        return jnp.dot(h.astype(jnp.float32), w.astype(jnp.float32))[..., 0]


def from_config(
    config,
    *,
    rngs=None,
    dtype=jnp.float32,
    scalar_head=False,
    param_dtype=None,
    remat=False,
    vision_block=0,
    remat_policy="nothing",
    logits_chunk=0,
    vision_chunk=0,
    scan_layers=False,
    scan_vision=False,
):
    """Randomly initialised model from an HF config dict (either layout) or a VLConfig.
    dtype: compute dtype; param_dtype: parameter dtype (default: dtype); scan_layers: decoder
    layers stacked and scanned (`TextModel`; the same initial weights); scan_vision: the vision
    tower's blocks stacked and scanned (`vision.VisionTower`; the same initial weights)."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    runtime = dict(
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        remat=remat,
        vision_block=int(vision_block),
        remat_policy=remat_policy,
        logits_chunk=int(logits_chunk),
        vision_chunk=int(vision_chunk),
        scan_layers=bool(scan_layers),
        scan_vision=bool(scan_vision),
    )
    cfg = config.replace(**runtime) if isinstance(config, VLConfig) else parse_hf_config(config, **runtime)
    return Qwen2VL(cfg, rngs=rngs, scalar_head=scalar_head)
