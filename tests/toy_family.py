"""A test-only third model family (`models.contract.VLModel`), unlike Qwen and LLaVA in both the
position scheme and the image layout, so that tests/test_family_contract.py can show the layers
above models/ (the engine, the GRPO learner) are family-agnostic by running them.

- Images: ``pixel_values [N, D]`` rows, image i takes ``r_i`` rows (``image_grid_thw`` row
  ``(r_i, 0, 7)``: only the first entry means anything) and gives ``r_i // 2`` tokens (two rows
  concatenated per token).
- Positions: 1-D ``[B, T]``, learned position embeddings; every run of consecutive image tokens
  shares ONE position (that of its first token), so a row's next position is not its token count.
- One causal attention block; KV cache in the contract's layout (k ``[1, B, 1, S, H]``, v ``[1, B, 1, H, S]``).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhfv_jax.models import contract

IMAGE, D = 24, 6  # image token id (past the LM head's 24 outputs: never sampled), pixel row width


@dataclasses.dataclass(frozen=True)
class PairImages(contract.ImageLayout):
    image_token_id: int = IMAGE

    def rows_per_image(self, image_grid_thw):
        return np.asarray(image_grid_thw).reshape(-1, 3)[:, 0].astype(np.int64)

    def tokens_per_image(self, image_grid_thw):
        return self.rows_per_image(image_grid_thw) // 2


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 24
    hidden_size: int = 16
    max_positions: int = 64


class ToyVLM(nnx.Module):
    shared_prompt = False
    group_images = False
    image_layout = PairImages()

    def __init__(self, config=ToyConfig(), *, rngs: nnx.Rngs):
        V, H = config.vocab_size, config.hidden_size
        self.config = config
        self.tok, self.pos = nnx.Embed(V + 1, H, rngs=rngs), nnx.Embed(config.max_positions, H, rngs=rngs)
        self.vision = nnx.Linear(2 * D, H, rngs=rngs)
        self.qkv, self.head = nnx.Linear(H, 3 * H, rngs=rngs), nnx.Linear(H, V, use_bias=False, rngs=rngs)

    def image_token_mask(self, input_ids):
        return jnp.asarray(input_ids) == IMAGE

    def rope_index(self, input_ids, attention_mask=None, image_grid_thw=None):
        """[B, T] positions: real tokens count up, a run of image tokens takes one position; pads 0."""
        ids = jnp.asarray(input_ids)
        am = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        img = ids == IMAGE
        cont = img & jnp.pad(img, ((0, 0), (1, 0)))[:, :-1]  # an image token after an image token
        pos = jnp.where(am, jnp.cumsum(am & ~cont, axis=1) - 1, 0).astype(jnp.int32)
        return pos, jnp.max(jnp.where(am, pos, -1), axis=1) + 1 - ids.shape[1]

    def text_position_ids(self, positions):
        return jnp.asarray(positions).astype(jnp.int32)

    def patch_unit(self):
        return 4

    def encode_images(self, pixel_values, image_grid_thw=None):
        """[N, D] rows (N even: padding rows come in pairs too) -> [N / 2, H]."""
        pv = jnp.asarray(pixel_values, jnp.float32)
        return self.vision(pv.reshape(pv.shape[0] // 2, 2 * D))

    def init_cache(self, batch, max_len, dtype=None):
        H = self.config.hidden_size
        return {
            "k": jnp.zeros((1, batch, 1, max_len, H)),
            "v": jnp.zeros((1, batch, 1, H, max_len)),
            "mask": jnp.zeros((batch, max_len), bool),
        }

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
        ids = jnp.asarray(input_ids)
        B, T = ids.shape
        am = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if position_ids is None:
            position_ids = self.rope_index(ids, am)[0]
        x = self.tok(ids)
        if image_embeds is None and pixel_values is not None:
            image_embeds = self.encode_images(pixel_values)
        if image_embeds is not None:
            is_img = self.image_token_mask(ids)
            idx = jnp.clip(jnp.cumsum(is_img.reshape(-1)).reshape(B, T) - 1, 0, image_embeds.shape[0] - 1)
            x = jnp.where(is_img[..., None], image_embeds[idx].astype(x.dtype), x)
        x = x + self.pos(position_ids)
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        if cache is None:
            keys, vals, kmask, slots = k, v, am, jnp.arange(T)
        else:
            kc = jax.lax.dynamic_update_slice(cache["k"][0][:, 0], k, (0, cache_index, 0))
            vc = jax.lax.dynamic_update_slice(cache["v"][0][:, 0], v.transpose(0, 2, 1), (0, 0, cache_index))
            kmask = jax.lax.dynamic_update_slice(cache["mask"], am, (0, cache_index))
            keys, vals, slots = kc, vc.transpose(0, 2, 1), jnp.arange(kc.shape[1])
            cache = {"k": kc[None, :, None], "v": vc[None, :, None], "mask": kmask}
        qslots = jnp.arange(T) + (0 if cache is None else cache_index)
        allowed = (slots[None, :] <= qslots[:, None])[None] & kmask[:, None, :]
        s = jnp.where(allowed, jnp.einsum("btd,bsd->bts", q, keys) / 4.0, -1e30)
        h = x + jnp.einsum("bts,bsd->btd", jax.nn.softmax(s, axis=-1), vals)
        out = h if return_hidden else self.logits(h)
        return out if cache is None else (out, cache)

    def logits(self, h):
        return self.head(h).astype(jnp.float32)
