"""Training rows of sampled responses: prompt rows repeated per sample (with their images),
prompt + response rows and masks, rows selected with their images.

A training row is the left-padded prompt followed by the sampled response (right-padded):

    [pad .. pad, prompt tokens, response tokens, pad .. pad]

so the model's positions (derived from the attention mask) are those the sampler used, and the
log-probability of response token t sits at column P + t of the teacher-forced forward.
"""

from __future__ import annotations

import numpy as np

from grlhfv_jax.models.contract import IMAGE_KEYS


def repeat_rows(batch: dict, n: int, layout) -> dict:
    """Each row (with its images) repeated n times in place: rows p*n .. p*n+n-1 are copies of p.
    `layout`: the model's `image_layout` (`models.contract.ImageLayout`)."""
    out = {k: np.repeat(np.asarray(v), n, axis=0) for k, v in batch.items() if k not in IMAGE_KEYS}
    if "pixel_values" in batch:
        out.update(layout.repeat(batch, n))
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
    for k in IMAGE_KEYS:
        if k in prompts:
            out[k] = prompts[k]
    return out


def pad_columns(x: np.ndarray, width: int, value=0) -> np.ndarray:
    """Right-pads [N, w] to [N, width]."""
    x = np.asarray(x)
    if x.shape[1] > width:
        raise ValueError(f"cannot pad {x.shape[1]} columns down to {width}")
    return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)


def select_rows(batch: dict, idx: np.ndarray, layout) -> dict:
    """The rows `idx` of a batch, with their images (`layout`: the model's `image_layout`)."""
    idx = np.asarray(idx)
    out = {k: np.asarray(v)[idx] for k, v in batch.items() if k not in IMAGE_KEYS}
    if "pixel_values" in batch:
        out.update(layout.select(batch, idx))
    return out
