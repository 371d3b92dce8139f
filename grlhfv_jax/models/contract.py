"""The model-family contract: everything trainers/, rollout/ and stages/ may ask of a model.

A family (one folder under models/, `families.family(model_type)`) builds models that satisfy
`VLModel` below; the layers above call these names and nothing else of a family, so they hold no
family arithmetic (no merge sizes, no M-RoPE rows, no per-image patch counts).

Batches carry a family's images in two entries, images in row order:
- ``pixel_values [N, ...]``: the image rows; image i takes ``layout.rows_per_image(grid)[i]`` of them
  (Qwen: one row per patch, ``[N, C*t*p*p]``; LLaVA: one ``[3, S, S]`` row per image);
- ``image_grid_thw [n, 3]`` int: one row per image, meaning the family's (Qwen: the (t, h, w) patch
  grid; LLaVA: (1, 1, 1)). The layers above only slice, repeat and concatenate it.
An image's placeholder tokens (``image_token_id``) sit in its row's ``input_ids``,
``layout.tokens_per_image(grid)[i]`` of them, images in the order of their first token.

Positions: ``model.rope_index(ids, mask, grid) -> (position_ids [..., B, T], _)`` for a whole
(prefill / training) batch; ``[..., B, T]`` is the family's layout (Qwen: M-RoPE ``[3, B, T]``;
LLaVA: ``[B, T]``), which callers only split along B and T (`next_slot_deltas`). Text tokens
appended after a prompt (decode steps, the judge's suffixes) get 1-D positions ``[B, T]`` turned
into the family's layout by ``model.text_position_ids``.

KV cache (`init_cache`): ``{"k": [L, B, Hkv, S, D], "v": [L, B, Hkv, D, S], "mask": [B, S]}``, or k / v as
tuples of L per-layer arrays; the model's cached forward returns the layout it was given.

Capabilities (declared, class attributes): ``shared_prompt`` (``shared_prompt_hidden``: rows that
repeat one prompt in runs of ``group`` run it once) and ``group_images`` (``group_first_images``
and ``shared_prompt_hidden(group_images=True)``: the tower encodes each run's images once).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np

IMAGE_KEYS = ("pixel_values", "image_grid_thw")  # a batch's image entries (module docstring)


class ImageLayout:
    """How a family lays out a batch's images (module docstring), and the host-side (numpy)
    bookkeeping built on it: which images belong to which row, rows repeated or selected with
    their images. A family subclasses it with `rows_per_image` and `tokens_per_image`."""

    image_token_id: int

    def rows_per_image(self, image_grid_thw) -> np.ndarray:
        """image_grid_thw [n, 3] -> [n] int: the `pixel_values` rows of each image."""
        raise NotImplementedError

    def tokens_per_image(self, image_grid_thw) -> np.ndarray:
        """image_grid_thw [n, 3] -> [n] int: the placeholder tokens of each image in `input_ids`."""
        raise NotImplementedError

    def row_slices(self, batch: dict) -> list[tuple[slice, slice]]:
        """Per row of ``batch["input_ids"] [B, T]``: (slice into pixel_values, slice into image_grid_thw)
        of that row's images. A row's image tokens that do not add up to whole images: ValueError."""
        grid = np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
        rows, tokens = self.rows_per_image(grid), self.tokens_per_image(grid)
        out, img, px = [], 0, 0
        for row in np.asarray(batch["input_ids"]):
            n_tok = int((row == self.image_token_id).sum())
            k = 0
            while n_tok > 0:
                n_tok -= int(tokens[img + k])
                k += 1
            if n_tok != 0:
                raise ValueError("image tokens of a row do not match image_grid_thw")
            n_px = int(rows[img : img + k].sum())
            out.append((slice(px, px + n_px), slice(img, img + k)))
            img, px = img + k, px + n_px
        return out

    def repeat(self, batch: dict, n: int) -> dict:
        """The image entries of `batch` with each row's images repeated n times in place (rows p*n ..
        p*n+n-1 of `np.repeat(rows, n)` are copies of row p)."""
        sl = self.row_slices(batch)
        pv, grid = np.asarray(batch["pixel_values"]), np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
        return {
            "pixel_values": np.concatenate([pv[a] for a, _ in sl for _ in range(n)]),
            "image_grid_thw": np.concatenate([grid[b] for _, b in sl for _ in range(n)]),
        }

    def select(self, batch: dict, idx) -> dict:
        """The image entries of the rows `idx` of `batch`, in that order."""
        sl = self.row_slices(batch)
        pv, grid = np.asarray(batch["pixel_values"]), np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
        return {
            "pixel_values": np.concatenate([pv[sl[i][0]] for i in idx]),
            "image_grid_thw": np.concatenate([grid[sl[i][1]] for i in idx]),
        }


@runtime_checkable
class VLModel(Protocol):
    """A vision-language model of any family, as the layers above models/ use it (shapes: module
    docstring and docs/internal_api.md)."""

    config: Any
    image_layout: ImageLayout  # the batch's image bookkeeping (`ImageLayout`)
    shared_prompt: bool  # capability: `shared_prompt_hidden`
    group_images: bool  # capability: `group_first_images` (+ shared_prompt_hidden(group_images=True))

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
        """-> logits [B, T, V] float32 (or hidden [B, T, H]); with a cache -> (that, new cache)."""

    def logits(self, h):
        """Final hidden states [..., H] -> float32 logits [..., V]."""

    def encode_images(self, pixel_values, image_grid_thw):
        """The image rows of n images -> their embeddings [sum(tokens_per_image), H], image order."""

    def image_token_mask(self, input_ids):
        """[B, T] bool: the placeholder tokens image embeddings replace."""

    def rope_index(self, input_ids, attention_mask, image_grid_thw):
        """(position_ids [..., B, T] int32 in the family's layout, deltas [B])."""

    def text_position_ids(self, positions):
        """1-D positions [B, T] of text tokens -> position_ids in the family's layout ([..., B, T])."""

    def init_cache(self, batch: int, max_len: int, dtype=None):
        """Empty KV cache (module docstring)."""

    def patch_unit(self) -> int:
        """Host pixel rows are padded to `processing.patch_bucket` in units of this many rows; 0: the
        family's image rows are never padded nor split per micro-batch (each image one row)."""


@runtime_checkable
class PromptFormat(Protocol):
    """A family's prompt side (`encoding.Codec.prompts`): chat examples with image placeholders and
    the special tokens. Qwen: `models.qwen2_vl.prompts.QwenPrompts`; LLaVA: `models.llava.LlavaPrompts`."""

    family: str
    eos_token: str  # ends an assistant turn (the sampler's stop token)
    special_tokens: tuple  # tokens a (demo) tokenizer must add for the family (Qwen: none beyond its own)

    def config_ids(self, tokenizer) -> dict:
        """hf config key -> token id of the family's special tokens (image placeholder, markers)."""

    def banned_ids(self, tokenizer) -> list[int]:
        """Token ids a sampled response must not contain (image placeholders and markers)."""

    def image_processor(self, image):
        """The image processor (`image`: the run's validated `config.image` section)."""

    def images(self, image_processor, images) -> tuple:
        """(pixel_values, image_grid_thw) of a list of PIL images (module docstring)."""

    def processor_config(self, image_processor) -> dict:
        """The preprocessor_config.json an exported folder ships."""

    def prepare_image(self, image_processor, image):
        """`image` for several examples (a judge's pairs): the processor's work done once where the
        family can keep it (Qwen: a `processing.PreparedImage`), else `image` itself."""

    def example(self, tokenizer, image_processor, question: str, images, response=None) -> dict:
        """One user turn with `images` (+ the assistant's `response`): input_ids [T] with each image's
        placeholder tokens expanded, loss_mask [T] (1 on the response and its end token),
        mm_token_type_ids [T], pixel_values and image_grid_thw of the images (module docstring)."""


def next_slot_deltas(position_ids, attention_mask):
    """Per row, (next position) - (next slot): a text token appended in cache slot q of row b has
    position q + deltas[b] (`VLModel.text_position_ids`), left or right padding alike.

    position_ids [..., B, T] (any family layout), attention_mask [B, T] -> int32 [B]: the largest
    position of the row's real tokens + 1 - T."""
    real = attention_mask.astype(bool)
    pos = position_ids.reshape((-1,) + real.shape)  # [R, B, T]
    last = jnp.max(jnp.where(real[None], pos, -1), axis=(0, 2))
    return (last + 1 - pos.shape[-1]).astype(jnp.int32)


def has_images(batch: dict) -> bool:
    """Whether a host batch carries images (`IMAGE_KEYS` present, at least one image)."""
    return (
        batch.get("pixel_values") is not None
        and batch.get("image_grid_thw") is not None
        and np.asarray(batch["image_grid_thw"]).size > 0
    )
