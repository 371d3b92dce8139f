"""Training rows of sampled responses: prompt rows repeated per sample (with their images),
prompt + response rows and masks, rows selected with their images.

A training row is the left-padded prompt followed by the sampled response (right-padded):

    [pad .. pad, prompt tokens, response tokens, pad .. pad]

so the model's positions (derived from the attention mask) are those the sampler used, and the
log-probability of response token t sits at column P + t of the teacher-forced forward.
"""

from __future__ import annotations

import numpy as np


def rows_image_slices(batch: dict, image_token_id: int, merge_size: int) -> list[tuple[slice, slice]]:
    """Per row: (slice into pixel_values, slice into image_grid_thw) of that row's images."""
    grid = np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
    patches = np.prod(grid, axis=1)
    tokens = patches // merge_size**2
    ids = np.asarray(batch["input_ids"])
    out, img, px = [], 0, 0
    for row in ids:
        n_tok = int((row == image_token_id).sum())
        k = 0
        while n_tok > 0:
            n_tok -= int(tokens[img + k])
            k += 1
        if n_tok != 0:
            raise ValueError("image tokens of a row do not match image_grid_thw")
        n_px = int(patches[img:img + k].sum())
        out.append((slice(px, px + n_px), slice(img, img + k)))
        img, px = img + k, px + n_px
    return out


def repeat_rows(batch: dict, n: int, *, image_token_id: int, merge_size: int) -> dict:
    """Each row (with its images) repeated n times in place: rows p*n .. p*n+n-1 are copies of p."""
    out = {k: np.repeat(np.asarray(v), n, axis=0) for k, v in batch.items()
           if k not in ("pixel_values", "image_grid_thw")}
    if "pixel_values" in batch:
        sl = rows_image_slices(batch, image_token_id, merge_size)
        pv, grid = np.asarray(batch["pixel_values"]), np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
        out["pixel_values"] = np.concatenate([pv[a] for a, _ in sl for _ in range(n)])
        out["image_grid_thw"] = np.concatenate([grid[b] for _, b in sl for _ in range(n)])
    return out


def response_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """[N, width] int32: 1 on the first lengths[i] columns."""
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def training_rows(prompts: dict, tokens: np.ndarray, lengths: np.ndarray, *, pad_id: int) -> dict:
    """Prompt rows (already repeated to match `tokens`) + responses -> a right-padded training batch.

    Returns input_ids / attention_mask / response_mask [N, P + R] and the prompt width P. Tokens
    after a row's length are set to `pad_id` and masked out.
    """
    tokens = np.asarray(tokens)
    rmask = response_mask(lengths, tokens.shape[1])
    resp = np.where(rmask == 1, tokens, pad_id).astype(np.int32)
    ids = np.concatenate([np.asarray(prompts["input_ids"], np.int32), resp], axis=1)
    attn = np.concatenate([np.asarray(prompts["attention_mask"], np.int32), rmask], axis=1)
    rm = np.concatenate([np.zeros_like(prompts["attention_mask"], dtype=np.int32), rmask], axis=1)
    out = {"input_ids": ids, "attention_mask": attn, "response_mask": rm}
    for k in ("pixel_values", "image_grid_thw"):
        if k in prompts:
            out[k] = prompts[k]
    return out


def pad_columns(x: np.ndarray, width: int, value=0) -> np.ndarray:
    """Right-pads [N, w] to [N, width]."""
    x = np.asarray(x)
    if x.shape[1] > width:
        raise ValueError(f"cannot pad {x.shape[1]} columns down to {width}")
    return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)


def select_rows(batch: dict, idx: np.ndarray, *, image_token_id: int, merge_size: int) -> dict:
    """The rows `idx` of a batch, with their images."""
    idx = np.asarray(idx)
    out = {k: np.asarray(v)[idx] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    if "pixel_values" in batch:
        sl = rows_image_slices(batch, image_token_id, merge_size)
        pv, grid = np.asarray(batch["pixel_values"]), np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
        out["pixel_values"] = np.concatenate([pv[sl[i][0]] for i in idx])
        out["image_grid_thw"] = np.concatenate([grid[sl[i][1]] for i in idx])
    return out
