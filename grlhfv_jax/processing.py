"""Text and image preprocessing for Qwen2-VL-style models: tokenizer, chat prompt, image patches,
image-token expansion and batch padding. Everything here is numpy / host side.

An encoded example (`encode_example`) is a dict of numpy arrays:
  input_ids          [T] int32   chat tokens, each `<|image_pad|>` expanded to its k image tokens
  loss_mask          [T] int32   1 on the response tokens including the closing `<|im_end|>`
  mm_token_type_ids  [T] int32   1 on image tokens (transformers' Qwen-VL forward wants it)
  pixel_values       [N, C*t*p*p] float32   Qwen2VLImageProcessor's patches, this example's images
  image_grid_thw     [n_images, 3] int32    (t, h, w) patch grid per image
`collate` pads a list of them into a batch.

An image can come already processed (`prepare_image`: a `PreparedImage`, the uint8 array that
also carries one processor's `pixel_values` / `image_grid_thw` for it, e.g. made in the data
read-ahead threads): `encode_example` then uses those patches instead of running the processor
again, when they were made by a processor with the same settings (`processor_key`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

import numpy as np

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_BLOCK = VISION_START + IMAGE_PAD + VISION_END
IMAGE_PLACEHOLDER = "<image>"  # optional in-text marker for where an image goes in a question
DEFAULT_SYSTEM = "You are a helpful assistant."

_SEQ_KEYS = ("input_ids", "attention_mask", "loss_mask", "mm_token_type_ids")


# ----------------------------------------------------------------------------- loaders


def load_tokenizer(path: str):
    """A fast HF tokenizer from a folder (a real Qwen-VL checkpoint or `data.tokenizer.train_tokenizer`'s)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder not found: {path!r}")
    tok = AutoTokenizer.from_pretrained(path)
    if not tok.is_fast:
        raise ValueError(f"tokenizer at {path!r} is not a fast tokenizer ({type(tok).__name__})")
    for t in (IMAGE_PAD, VISION_START, VISION_END, IM_START, IM_END):
        tid = tok.convert_tokens_to_ids(t)
        if tid is None or tid == tok.unk_token_id or tok.encode(t, add_special_tokens=False) != [tid]:
            raise ValueError(f"tokenizer at {path!r} lacks the special token {t!r} (not a Qwen2-VL-style tokenizer)")
    return tok


def load_image_processor(
    path_or_none: str | None = None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    patch_size: int | None = None,
    merge_size: int | None = None,
    temporal_patch_size: int | None = None,
):
    """transformers' Qwen2-VL image processor (PIL backend: no torchvision needed).

    Reads `preprocessor_config.json` from `path_or_none` when given, else uses Qwen2-VL's defaults
    (patch 14, merge 2, temporal patch 2, min 56*56, max 28*28*1280 pixels). Any keyword that is not
    None overrides (tiny test models use smaller patches / pixel budgets).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    overrides = dict(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if path_or_none is None:
        proc = Qwen2VLImageProcessorPil(**overrides)
    else:
        cfg = os.path.join(path_or_none, "preprocessor_config.json")
        if not os.path.isfile(cfg):
            raise FileNotFoundError(f"image processor config not found: {cfg!r}")
        proc = Qwen2VLImageProcessorPil.from_pretrained(path_or_none, **overrides)
    lo, hi = proc.size["shortest_edge"], proc.size["longest_edge"]
    if lo > hi:
        raise ValueError(f"image processor: min_pixels={lo} > max_pixels={hi}")
    return proc


def max_frame_patches(proc) -> int:
    """The most patches one image frame can have after `proc` resizes it (max_pixels / patch^2):
    the vision attention block that makes per-frame attention exact (`VLConfig.vision_block`)."""
    return int(proc.size["longest_edge"]) // int(proc.patch_size) ** 2


# ----------------------------------------------------------------------------- chat text


def _split_question(question: str, num_images: int) -> list[dict]:
    """Chat-template content list: images in place of `<image>` markers, else all images first."""
    n_marks = question.count(IMAGE_PLACEHOLDER)
    if n_marks == 0:
        return [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    if n_marks != num_images:
        raise ValueError(f"question has {n_marks} {IMAGE_PLACEHOLDER!r} markers but num_images={num_images}")
    content = []
    for k, piece in enumerate(question.split(IMAGE_PLACEHOLDER)):
        if k:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def chat_prompt(question: str, *, num_images: int = 1, system: str | None = None, tokenizer=None) -> str:
    """Qwen2-VL chat text of one user turn, ending with "<|im_start|>assistant\\n".

    Each image is one `<|vision_start|><|image_pad|><|vision_end|>` block (expanded later, on ids, by
    `encode_example`); blocks go where the question has `<image>` markers, else before the text.
    `system=None` gives Qwen2-VL's default system turn. With a `tokenizer` that has a chat template
    (a real checkpoint's, or ours), that template renders the text.
    """
    content = _split_question(question, num_images)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": content})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    sys_text = DEFAULT_SYSTEM if system is None else system
    user = "".join(IMAGE_BLOCK if c["type"] == "image" else c["text"] for c in content)
    return f"{IM_START}system\n{sys_text}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"


# ----------------------------------------------------------------------------- images


def load_image(image):
    """A PIL RGB image from a PIL image, a path, or a uint8 array [H, W, 3]; errors name the file."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path!r}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read image file {path!r} (corrupt or not an image): {e}") from e
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image array must be [H, W, 3], got shape {image.shape}")
        return Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise TypeError(f"unsupported image type {type(image).__name__}: give a PIL image, a path or an array")


_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def processor_key(image_processor) -> str:
    """The settings of `image_processor` as text (its JSON): two processors with the same key make
    the same patches for any image. Cached per processor object."""
    try:
        return _KEYS[image_processor]
    except (KeyError, TypeError):
        key = f"{type(image_processor).__name__}:{image_processor.to_json_string()}"
        try:
            _KEYS[image_processor] = key
        except TypeError:  # not weak-referenceable
            pass
        return key


class PreparedImage(np.ndarray):
    """A decoded uint8 [H, W, 3] image (any reader of the array sees just that) that also carries an
    image processor's output for it: `pixel_values` [N, D] float32, `image_grid_thw` [1, 3] int32 and
    the processor's `key` (`processor_key`). Made by `prepare_image`; a view or copy of it (a crop,
    a slice, arithmetic) is a plain image again (`prepared` None): its patches would be wrong."""

    prepared = None  # (key, pixel_values, image_grid_thw) on the array `prepare_image` made

    def __array_finalize__(self, obj):
        self.prepared = None

    def patches(self, image_processor):
        """(pixel_values, image_grid_thw) if made by a processor with `image_processor`'s settings, else None."""
        if self.prepared is None or self.prepared[0] != processor_key(image_processor):
            return None
        return self.prepared[1], self.prepared[2]


def _process(image_processor, images) -> tuple[np.ndarray, np.ndarray]:
    out = image_processor(images=images)
    return (
        np.asarray(out["pixel_values"], dtype=np.float32),
        np.asarray(out["image_grid_thw"], dtype=np.int32).reshape(-1, 3),
    )


def prepare_image(image_processor, image) -> PreparedImage:
    """`image` (PIL, path or uint8 [H, W, 3]) as a `PreparedImage`: the uint8 array plus
    `image_processor`'s patches for it, exactly those `encode_example` would compute."""
    pil = load_image(image)
    pv, grid = _process(image_processor, [pil])
    pv.flags.writeable = grid.flags.writeable = False  # shared by every example of the image: no copy
    arr = np.asarray(image, np.uint8) if isinstance(image, np.ndarray) else np.asarray(pil, np.uint8)
    out = arr.view(PreparedImage)
    out.prepared = (processor_key(image_processor), pv, grid)
    return out


def num_image_tokens(image_grid_thw, merge_size: int) -> np.ndarray:
    """LLM tokens per image: prod(t, h, w) / merge_size**2. [n_images] int."""
    grid = np.asarray(image_grid_thw).reshape(-1, 3)
    return np.prod(grid, axis=-1) // (merge_size**2)


def expand_image_tokens(ids: Sequence[int], counts: Sequence[int], image_token_id: int) -> np.ndarray:
    """Replace the k-th `image_token_id` in `ids` by `counts[k]` copies of it. Returns int32 [T']."""
    ids = np.asarray(ids, dtype=np.int64)
    where = np.flatnonzero(ids == image_token_id)
    if len(where) != len(counts):
        raise ValueError(f"text has {len(where)} {IMAGE_PAD} placeholders but {len(counts)} images were given")
    reps = np.ones(len(ids), dtype=np.int64)
    reps[where] = np.asarray(counts, dtype=np.int64)
    return np.repeat(ids, reps).astype(np.int32)


# ----------------------------------------------------------------------------- examples


def encode_example(tokenizer, image_processor, prompt_text: str, images=(), response: str | None = None) -> dict:
    """Tokenize one chat example and preprocess its images (see the module docstring for the keys).

    `prompt_text` is chat text with one `<|image_pad|>` per image (e.g. from `chat_prompt`);
    `images` are PIL images, paths or uint8 arrays, in placeholder order; `PreparedImage`s made by a
    processor with `image_processor`'s settings give their patches without running it again.
    `response` (optional) is appended as the assistant's answer followed by `<|im_end|>`;
    `loss_mask` is 1 exactly there.
    """
    images = list(images or ())
    ready = [im.patches(image_processor) if isinstance(im, PreparedImage) else None for im in images]
    if any(r is None for r in ready):
        ready = None
        images = [load_image(im) for im in images]
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    n_slots = prompt_ids.count(image_token_id)
    if n_slots != len(images):
        raise ValueError(f"prompt has {n_slots} {IMAGE_PAD} placeholders but {len(images)} images were given")

    patch_dim = 3 * image_processor.temporal_patch_size * image_processor.patch_size**2
    if images and ready is not None:
        pixel_values, grid = (
            ready[0]
            if len(ready) == 1
            else (np.concatenate([r[0] for r in ready]), np.concatenate([r[1] for r in ready]))
        )
    elif images:
        pixel_values, grid = _process(image_processor, images)
    else:
        pixel_values = np.zeros((0, patch_dim), np.float32)
        grid = np.zeros((0, 3), np.int32)
    ids = expand_image_tokens(prompt_ids, num_image_tokens(grid, image_processor.merge_size), image_token_id)

    resp_ids = np.zeros((0,), np.int32)
    if response is not None:
        resp = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(IM_END)]
        resp_ids = np.asarray(resp, np.int32)
        if (resp_ids == image_token_id).any():
            raise ValueError(f"response text contains {IMAGE_PAD}; images belong in the prompt")
    input_ids = np.concatenate([ids, resp_ids]).astype(np.int32)
    loss_mask = np.concatenate([np.zeros(len(ids), np.int32), np.ones(len(resp_ids), np.int32)])
    return {
        "input_ids": input_ids,
        "loss_mask": loss_mask,
        "mm_token_type_ids": (input_ids == image_token_id).astype(np.int32),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
    }


def patch_bucket(n: int, unit: int) -> int:
    """`n` patches rounded up to `unit` x one of 1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5
    times them): a batch of images of any sizes pads its pixel rows to one of ~2 shapes per doubling
    (few recompilations of a jitted step), at most 1.5x the patches (2x below 2 units)."""
    units = max(-(-int(n) // int(unit)), 1)
    step = 1
    while step < units:
        if step * 3 // 2 >= units and step >= 2:
            return step * 3 // 2 * unit
        step *= 2
    return step * unit


def pad_patches(batch: dict, total: int) -> dict:
    """`batch` with `pixel_values` [N, D] padded with zero rows to `total` (>= N). The vision tower
    treats patches past the grid total as padding (their own frame, never read), so the outputs
    are unchanged; image_grid_thw is kept as is."""
    pv = batch["pixel_values"]
    n = int(pv.shape[0])
    if total < n:
        raise ValueError(f"pad_patches: {n} patches > total {total}")
    if total == n:
        return batch
    return dict(
        batch,
        pixel_values=np.concatenate(
            [np.asarray(pv), np.zeros((total - n,) + tuple(pv.shape[1:]), np.asarray(pv).dtype)]
        ),
    )


def collate(
    examples: Sequence[dict],
    *,
    pad_id: int,
    side: str = "left",
    max_len: int | None = None,
    pad_to_multiple: int | None = None,
) -> dict:
    """Pad encoded examples into a batch of numpy arrays.

    Rows are padded with `pad_id` on the left (generation: every prompt ends at the last column)
    or on the right (training) to `max_len` when given (static shapes), else to the longest row
    rounded up to `pad_to_multiple` (few distinct shapes -> few recompilations).
    Returns input_ids / attention_mask / loss_mask / mm_token_type_ids [B, T] int32 (masks 0 on
    padding), pixel_values [sum N, D] float32 concatenated in row order and image_grid_thw
    [sum n_images, 3] int32.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not examples:
        raise ValueError("collate: empty list of examples")
    lengths = [len(ex["input_ids"]) for ex in examples]
    if max_len is not None:
        too_long = [(i, n) for i, n in enumerate(lengths) if n > max_len]
        if too_long:
            i, n = too_long[0]
            raise ValueError(
                f"example {i} has {n} tokens > max_len={max_len} "
                f"({len(too_long)} example(s) too long: {[j for j, _ in too_long]})"
            )
    T = max(lengths)
    if pad_to_multiple:
        T = -(-T // pad_to_multiple) * pad_to_multiple
    if max_len is not None:
        T = max_len
    B = len(examples)
    out = {k: np.zeros((B, T), np.int32) for k in _SEQ_KEYS}
    out["input_ids"][:] = pad_id
    for b, (ex, n) in enumerate(zip(examples, lengths)):
        sl = slice(T - n, T) if side == "left" else slice(0, n)
        out["input_ids"][b, sl] = ex["input_ids"]
        out["attention_mask"][b, sl] = 1
        out["loss_mask"][b, sl] = ex.get("loss_mask", np.zeros(n, np.int32))
        if "mm_token_type_ids" in ex:
            out["mm_token_type_ids"][b, sl] = ex["mm_token_type_ids"]
    dims = {ex["pixel_values"].shape[-1] for ex in examples}
    if len(dims) != 1:
        raise ValueError(f"collate: examples have different pixel_values widths {sorted(dims)}")
    out["pixel_values"] = np.concatenate([ex["pixel_values"] for ex in examples]).astype(np.float32)
    out["image_grid_thw"] = np.concatenate([np.asarray(ex["image_grid_thw"]).reshape(-1, 3) for ex in examples]).astype(
        np.int32
    )
    return out
