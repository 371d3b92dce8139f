"""LLaVA-1.5 in Flax NNX: CLIP vision tower + mlp2x_gelu projector (vision.py) + Llama decoder (GQA,
RMSNorm, SwiGLU, 1-D RoPE), optional KV cache, optional scalar head.

NNX paths mirror Qwen2VL's (``visual``, ``model.layers.N``, ``model.embed_tokens``, ``lm_head``,
``score_head``) so code that names parameters by path works for both families; hub.py maps them to
LlavaForConditionalGeneration's checkpoint names. The call is Qwen2VL's (docs/models.md); what differs:
positions are 1-D ``[B, T]`` (no M-RoPE), every image is one fixed ``[C, S, S]`` array giving
``config.image_tokens`` embeddings, and ``image_grid_thw`` is accepted but ignored.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ... import sharding
from .. import contract
from ..layers import Dense, Embed, RMSNorm, attention, remat
from .config import LlavaConfig, parse_hf_config
from .vision import LlavaVision


def _concrete(x):
    """numpy value of x, or None when x is traced (inside jit)."""
    if x is None:
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """Llama's default rotary: position_ids [B, T] -> cos, sin [B, T, head_dim] (float32 math, then dtype)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.asarray(position_ids).astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x, cos, sin):
    """x [B, T, H, D]; cos / sin [B, T, 1, D]: x * cos + rotate_half(x) * sin."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def default_position_ids(attention_mask, prev=None):
    """1-D positions [B, T] int32: the index of each token among its row's real tokens (plus `prev`
    [B], real tokens already in a KV cache), 0 on padding: transformers' `generate`, left or right
    padding alike."""
    mask = jnp.asarray(attention_mask).astype(bool)
    pos = jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
    if prev is not None:
        pos = pos + jnp.asarray(prev, jnp.int32)[:, None]
    return jnp.where(mask, pos, 0).astype(jnp.int32)


def rope_index(input_ids, attention_mask=None, image_grid_thw=None):
    """(position_ids [B, T] int32, rope_deltas [B] int32), the 1-D analogue of qwen2_vl.rope_index:
    a token appended in cache slot q has position q + rope_deltas[b] (`decode_position_ids`).
    Image tokens count as ordinary tokens; image_grid_thw is ignored."""
    input_ids = jnp.asarray(input_ids)
    B, T = input_ids.shape
    mask = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    pos = default_position_ids(mask)
    deltas = jnp.sum(mask, axis=1, dtype=jnp.int32) - T
    return pos, deltas


def decode_position_ids(slots, rope_deltas):
    """Positions of decoded tokens: slot + rope_deltas. slots [B, T] or [T], rope_deltas [B] -> [B, T] int32."""
    slots = jnp.asarray(slots, jnp.int32)
    if slots.ndim == 1:
        slots = slots[None]
    return slots + jnp.asarray(rope_deltas, jnp.int32)[:, None]


class Attention(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs):
        H, D, nq, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        kw = dict(rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype, bias=cfg.attention_bias)
        self.nq, self.nkv, self.D, self.dtype = nq, nkv, D, cfg.dtype
        self.q_proj = Dense(H, nq * D, axes=("embed", "q_heads"), **kw)
        self.k_proj = Dense(H, nkv * D, axes=("embed", "kv_heads"), **kw)
        self.v_proj = Dense(H, nkv * D, axes=("embed", "kv_heads"), **kw)
        self.o_proj = Dense(nq * D, H, axes=("q_heads", "embed"), **kw)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None):
        """x [B, T, H]; cos / sin [B, T, D]; mask [B, T, S]; kv_cache (k [B, Hkv, S, D], v [B, Hkv, D, S])
        or None. Returns (out [B, T, H], written (k, v) or None)."""
        B, T, _ = x.shape
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        q = apply_rope(self.q_proj(x).reshape(B, T, self.nq, self.D), c, s)
        k = apply_rope(self.k_proj(x).reshape(B, T, self.nkv, self.D), c, s)
        v = self.v_proj(x).reshape(B, T, self.nkv, self.D)
        if kv_cache is None:
            o, new = attention(q, k, v, mask, self.dtype), None
        else:  # the cache's layout (layers.attention's cache_layout): the decode dots read it untransposed
            ck, cv = kv_cache
            k, v = jnp.einsum("btkd->bktd", k).astype(ck.dtype), jnp.einsum("btkd->bkdt", v).astype(cv.dtype)
            ck = jax.lax.dynamic_update_slice(ck, k, (0, 0, cache_index, 0))
            cv = jax.lax.dynamic_update_slice(cv, v, (0, 0, 0, cache_index))
            new = (ck, cv)
            n = mask.shape[-1]  # slots to attend: all S, or the filled [0, n) when known statically
            o = attention(
                q, ck[:, :, :n].astype(self.dtype), cv[..., :n].astype(self.dtype), mask, self.dtype, cache_layout=True
            )
        return self.o_proj(o.reshape(B, T, self.nq * self.D)), new


class MLP(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs):
        H, I = cfg.hidden_size, cfg.intermediate_size
        kw = dict(bias=cfg.mlp_bias, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.gate_proj = Dense(H, I, axes=("embed", "mlp"), **kw)
        self.up_proj = Dense(H, I, axes=("embed", "mlp"), **kw)
        self.down_proj = Dense(I, H, axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlavaConfig, rngs):
        kw = dict(eps=cfg.rms_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **kw)
        self.self_attn = Attention(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, cos, sin, mask, kv_cache=None, cache_index=None):
        a, new = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, cache_index)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), new


def _layer_call(layer, x, cos, sin, mask, kv_cache, cache_index):
    return layer(x, cos, sin, mask, kv_cache, cache_index)


class TextModel(nnx.Module):
    """Token embedding, L decoder layers (an nnx.List), final norm: transformers' LlamaModel."""

    def __init__(self, cfg: LlavaConfig, rngs):
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, **kw)


@dataclasses.dataclass(frozen=True)
class LlavaImages(contract.ImageLayout):
    """LLaVA's image layout: one `pixel_values` row [3, S, S] per image (image_grid_thw rows (1, 1, 1)),
    `image_tokens` `<image>` tokens per image."""

    image_token_id: int
    image_tokens: int

    def rows_per_image(self, image_grid_thw) -> np.ndarray:
        return np.ones(np.asarray(image_grid_thw).reshape(-1, 3).shape[0], np.int64)

    def tokens_per_image(self, image_grid_thw) -> np.ndarray:
        return np.full(np.asarray(image_grid_thw).reshape(-1, 3).shape[0], self.image_tokens, np.int64)


class Llava(nnx.Module):
    """LLaVA-1.5 for conditional generation (transformers' LlavaForConditionalGeneration).

    Inputs: input_ids [B, T] with every image's `config.image_tokens` placeholder tokens
    (`image_token_id`) already expanded (as LlavaProcessor does; `processing.expand_image_tokens`),
    pixel_values [n, C, S, S] (CLIPImageProcessor), the images in row-major order of their tokens."""

    shared_prompt = False  # capabilities (`models.contract`): no shared_prompt_hidden / group_first_images
    group_images = False

    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs, scalar_head: bool = False):
        if config.scan_layers or config.scan_vision:
            raise ValueError("scan_layers / scan_vision are not implemented for LLaVA")
        self.config = config
        self.visual = LlavaVision(config, rngs)
        self.model = TextModel(config, rngs)
        kw = dict(rngs=rngs, dtype=config.dtype, param_dtype=config.param_dtype)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Dense(config.hidden_size, config.vocab_size, axes=("embed", "vocab"), bias=False, **kw)
        )
        self.score_head = Dense(config.hidden_size, 1, axes=("embed", None), bias=False, **kw) if scalar_head else None
        self.activation_mesh = None  # set by sharding.shard_model / load_pretrained (as Qwen2VL)

    def _constrain(self, x, axes):
        return sharding.constrain(x, axes, self.activation_mesh)

    # ----------------------------------------------------------------- helpers
    def rope_index(self, input_ids, attention_mask=None, image_grid_thw=None):
        """(position_ids [B, T] int32, rope_deltas [B] int32); see `rope_index`."""
        return rope_index(input_ids, attention_mask)

    def image_token_mask(self, input_ids):
        """[B, T] bool: the placeholder tokens that image embeddings replace (in row order)."""
        return jnp.asarray(input_ids) == self.config.image_token_id

    @property
    def image_layout(self) -> LlavaImages:
        """The batch's image bookkeeping (`models.contract.ImageLayout`)."""
        return LlavaImages(int(self.config.image_token_id), int(self.config.image_tokens))

    def text_position_ids(self, positions):
        """1-D positions [B, T] of text tokens -> position_ids [B, T] int32 (LLaVA's own layout)."""
        return jnp.asarray(positions).astype(jnp.int32)

    def patch_unit(self) -> int:
        """0: an image is one fixed-size pixel row; image rows are never padded nor split per micro-batch."""
        return 0

    def encode_images(self, pixel_values, image_grid_thw=None):
        """pixel_values [n, C, S, S] -> image embeddings [n * image_tokens, hidden] (compute dtype).
        image_grid_thw is ignored (accepted for Qwen2VL's call)."""
        return self.visual(pixel_values)

    def init_cache(self, batch: int, max_len: int, dtype=None):
        """Empty KV cache: k [L, B, Hkv, S, D], v [L, B, Hkv, D, S] (compute dtype), mask [B, S] bool;
        Qwen2VL's layout."""
        c = self.config
        lead = (c.num_hidden_layers, batch, c.num_key_value_heads)
        dt = dtype or c.dtype
        return {
            "k": jnp.zeros(lead + (max_len, c.head_dim), dt),
            "v": jnp.zeros(lead + (c.head_dim, max_len), dt),
            "mask": jnp.zeros((batch, max_len), bool),
        }

    def _check_images(self, input_ids, n_embeds, exact):
        """Concrete inputs only: the image tokens must equal the embeddings (`exact`: from pixel_values)
        or not exceed them (given image_embeds may carry padding rows past the real ones)."""
        ids = _concrete(input_ids)
        if ids is None:
            return
        n_tok = int((ids == self.config.image_token_id).sum())
        if n_embeds is None:
            if n_tok:
                raise ValueError(f"input_ids hold {n_tok} image tokens but no pixel_values / image_embeds given")
        elif n_tok > n_embeds or (exact and n_tok != n_embeds):
            raise ValueError(
                f"image token mismatch: input_ids hold {n_tok} image tokens but the images give "
                f"{n_embeds} embeddings ({self.config.image_tokens} per image)"
            )

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, image_embeds=None):
        """Token embeddings with the image embeddings scattered into the image-token slots [B, T, H]
        (from pixel_values [n, C, S, S], or image_embeds [>= image tokens, H] in token order)."""
        input_ids = jnp.asarray(input_ids)
        x = self.model.embed_tokens(input_ids)
        if image_embeds is None and pixel_values is not None:
            n_embeds = jnp.shape(pixel_values)[0] * self.config.image_tokens
        else:
            n_embeds = None if image_embeds is None else image_embeds.shape[0]
        self._check_images(input_ids, n_embeds, exact=image_embeds is None)  # before running the vision tower
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        if image_embeds is None:
            return x
        is_img = self.image_token_mask(input_ids)
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
        """input_ids [B, T]; attention_mask [B, T] (1 = real token; left or right padding); pixel_values
        [n, C, S, S]; position_ids [B, T] (default: `default_position_ids` of the mask, continuing the real
        tokens already in `cache`). Without cache: float32 logits [B, T, V] (or the final hidden states
        [B, T, H] with return_hidden). With cache (`init_cache`) and cache_index (slot of the first new
        token; a Python int for a prefill, traced in a decode loop): (out, new cache)."""
        cfg = self.config
        input_ids = jnp.asarray(input_ids).astype(jnp.int32)
        B, T = input_ids.shape
        attention_mask = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        x = self.embed(input_ids, pixel_values, image_embeds=image_embeds)
        if cache is None:
            q_slot = jnp.arange(T)
            mask = attention_mask[:, None, :] & (q_slot[None, :] <= q_slot[:, None])[None]
            prev = None
        else:
            cache_index = 0 if cache_index is None else cache_index
            # a Python int cache_index: only slots [0, cache_index + T) can be attended, so attention
            # reads just those; a traced one (decode loop): all S slots, masked
            S = cache_index + T if isinstance(cache_index, (int, np.integer)) else cache["mask"].shape[1]
            if S > cache["mask"].shape[1]:
                raise ValueError(
                    f"KV cache of {cache['mask'].shape[1]} slots cannot take {T} tokens at slot {cache_index}"
                )
            cache_index = jnp.asarray(cache_index, jnp.int32)
            prev = jnp.sum(cache["mask"] & (jnp.arange(cache["mask"].shape[1]) < cache_index), axis=1)
            cmask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, cache_index))
            q_slot = cache_index + jnp.arange(T)
            mask = cmask[:, None, :S] & (jnp.arange(S)[None, :] <= q_slot[:, None])[None]
            new_k, new_v = [], []
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, prev)
        cos, sin = rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.dtype)

        stream = ("act_batch", "act_length", "act_embed")
        x = self._constrain(x, stream)
        call = remat(_layer_call, cfg)
        for i, layer in enumerate(self.model.layers):
            kv = None if cache is None else (cache["k"][i], cache["v"][i])
            x, new = call(layer, x, cos, sin, mask, kv, cache_index)
            x = self._constrain(x, stream)
            if cache is not None:
                new_k.append(new[0])
                new_v.append(new[1])
        h = self.model.norm(x)
        out = h if return_hidden else self.logits(h)
        if cache is None:
            return out
        per_layer = isinstance(cache["k"], (tuple, list))  # the layout it came in: stacked or per layer
        return out, {
            "k": tuple(new_k) if per_layer else jnp.stack(new_k),
            "v": tuple(new_v) if per_layer else jnp.stack(new_v),
            "mask": cmask,
        }

    def logits(self, h):
        """Final hidden states [..., H] -> float32 logits [..., V]."""
        dt = self.config.dtype
        w = (self.model.embed_tokens.weight[...].T if self.lm_head is None else self.lm_head.kernel[...]).astype(dt)
        out = jnp.dot(h.astype(dt), w, preferred_element_type=jnp.float32)
        if out.ndim >= 2:
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
            input_ids, mask, pixel_values, image_embeds=image_embeds, position_ids=position_ids, return_hidden=True
        )
        last = T - 1 - jnp.argmax(mask[:, ::-1], axis=1)
        hl = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        return jnp.dot(hl.astype(jnp.float32), self.score_head.kernel[...].astype(jnp.float32))[:, 0]

    def score_hidden(self, h):
        """The scalar head on final hidden states ``[..., H]`` -> float32 ``[...]`` (Qwen2VL's: `score` is
        this at each row's last real token; at every token it is PPO's per-token value head)."""
        if self.score_head is None:
            raise ValueError("this model has no scalar head; build it with scalar_head=True")
        return jnp.dot(h.astype(jnp.float32), self.score_head.kernel[...].astype(jnp.float32))[..., 0]


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
    """Randomly initialised model from an HF LLaVA config dict or a LlavaConfig (keywords as
    qwen2_vl.from_config; vision_block / vision_chunk are unused, scan_layers / scan_vision rejected)."""
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
    cfg = config.replace(**runtime) if isinstance(config, LlavaConfig) else parse_hf_config(config, **runtime)
    return Llava(cfg, rngs=rngs, scalar_head=scalar_head)
