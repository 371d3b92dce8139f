"""Scalar-head scores of ready batches (the score-only RM, a critic), on the model's mesh."""

from __future__ import annotations

import numpy as np
from flax import nnx

from grlhfv_jax import sharding
from grlhfv_jax.trainers import loop
from grlhfv_jax.trainers.rows import select_rows


@nnx.jit
def _scores(model, batch):
    return model.score(
        batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"), batch.get("image_grid_thw")
    )


SCORE_ROWS = 320  # rows per scoring call by default (policy_rl_rm.score_rows_per_call sets it in a GRPO step)


def _filled_calls(total: int, rows: int):
    """(indices, real) of each call over `total` rows in calls of `rows`: at most `rows` rows are one
    call of their own size; more are calls of exactly `rows`, a short last one filled with copies of
    the last row (index total - 1) whose outputs the caller drops (keeps the first `real`): every call
    has one row count (one compiled shape, the same memory). No rows: no calls."""
    if 0 < total <= rows:
        yield np.arange(total), total
        return
    for start in range(0, total, rows):
        real = min(rows, total - start)
        yield np.concatenate([np.arange(start, start + real), np.full(rows - real, total - 1)]), real


def score_batch(rm, batch: dict, rows: int | None = None) -> np.ndarray:
    """Scalar-head scores [B] of a ready batch (input_ids, attention_mask, pixel_values, image_grid_thw),
    its rows split over the model's mesh (`trainers.loop.place_batch`), `rows` (default SCORE_ROWS:
    divides over 8, 40 and 64 devices) per call; a batch of at most that many is one call. A last
    call of fewer rows is filled up to `rows` with copies of the batch's last row (and its images),
    whose scores are dropped: every call has one row count (one compiled shape, the same memory)."""
    rows = int(rows or SCORE_ROWS)
    B = int(np.shape(batch["input_ids"])[0])
    if B <= rows:
        return sharding.host_rows(_scores(rm, loop.place_batch(rm, batch)))  # several processes: this host's rows
    out = []
    for idx, real in _filled_calls(B, rows):
        part = select_rows(batch, idx, rm.image_layout)
        if "image_grid_thw" in part and not np.asarray(part["image_grid_thw"]).size:  # a slice without images
            part = {k: v for k, v in part.items() if k not in ("pixel_values", "image_grid_thw")}
        out.append(sharding.host_rows(_scores(rm, loop.place_batch(rm, part)))[:real])
    return np.concatenate(out)
