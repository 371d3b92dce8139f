"""The GRPO learner: sampled responses -> training rows, advantages, reference log-probs, and
the mini-batch updates (`grpo_update`).

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


def response_advantages(rewards: np.ndarray, row_valid: np.ndarray, estimator: str) -> np.ndarray:
    """Advantages per response ``[P*G]`` from rewards ``[P, G]`` by the registered ``estimator``
    (`grpo.ADVANTAGE_ESTIMATORS`); rows with ``row_valid`` 0 (fill prompts) get 0."""
    import jax.numpy as jnp

    from grlhfv_jax.rl import grpo

    adv = np.asarray(grpo.compute_advantages(jnp.asarray(rewards, jnp.float32), estimator))
    return adv.reshape(-1) * row_valid


def grpo_update(state, ref_model, prompts: dict, gen, rewards: np.ndarray, *, pad_id: int, cfg,
                mini_batches: int = 1, advantages: np.ndarray | None = None) -> dict:
    """One GRPO iteration on sampled groups: advantages (``cfg.advantage_estimator``), reference
    log-probs, `mini_batches` updates of `steps.grpo_step` with ``cfg``.

    prompts: the left-padded prompt batch [P, Tp] that was sampled from (with `valid` [P]: fill rows
    get no loss); gen: the GenerationOutput with P*G rows; rewards [P, G].
    Old log-probs are the sampler's (the policy that sampled = the one updated first); reference
    log-probs come from one pass over all P*G rows, in ``cfg.ref_num_micro_batches`` slices of
    whole groups (memory only: the same values).
    advantages: [P, G] computed by the caller (other groupings than one group per prompt), else
    from rewards by ``cfg.advantage_estimator``.
    Several processes: `prompts`, `gen`, `rewards` are this host's rows (block `process_index` of
    the global batch, `stages.common.HostRowsRollout`); each mini-batch is every host's block m
    (one mini-batch: the one-process update); the rollout metrics cover every host's groups.
    Returns the mean of the step metrics plus rollout metrics, and the seconds of its two device
    phases: ``time/ref_logprobs_s`` (the reference pass) and ``time/update_s`` (the mini-batch
    updates; each step's metrics are read back, so the time is the device's, not a dispatch's).
    """
    import time

    from grlhfv_jax import sharding
    from grlhfv_jax.rl import grpo
    from grlhfv_jax.trainers import loop, steps

    P, G = rewards.shape
    model = state.model
    tok_id, merge = model.config.image_token_id, model.config.spatial_merge_size
    valid = np.asarray(prompts.get("valid", np.ones(P, np.int32)))
    base = {k: v for k, v in prompts.items() if k not in ("valid", "loss_mask", "mm_token_type_ids")}
    rows = repeat_rows(base, G, image_token_id=tok_id, merge_size=merge)
    tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    batch = training_rows(rows, tokens, lengths, pad_id=pad_id)
    row_valid = np.repeat(valid, G)
    batch["response_mask"] = batch["response_mask"] * row_valid[:, None]
    Tp = base["input_ids"].shape[1]
    lp = np.asarray(gen.logprobs) * response_mask(lengths, tokens.shape[1])
    batch["old_logp"] = np.concatenate([np.zeros((P * G, Tp), np.float32), lp.astype(np.float32)], axis=1)
    if advantages is None:
        adv = response_advantages(rewards, row_valid, cfg.advantage_estimator)
    else:
        adv = np.asarray(advantages, np.float64).reshape(-1) * row_valid
    batch["advantages"] = adv.astype(np.float32)
    # the LM head runs only on the response columns [Tp, Tp + R): the loss reads nothing else; the
    # G rows of a prompt share columns [0, Tp), which the model runs once per prompt (group=G)
    window = int(tokens.shape[1])
    batch["window_start"] = np.full(P * G, Tp, np.int32)
    t0 = time.perf_counter()
    # each micro-batch (of the reference pass, of each update) runs the vision tower on its own images
    jb = loop.place_batch(ref_model, loop.micro_batch_images(ref_model, batch, cfg.ref_num_micro_batches, G))
    batch["ref_logp"] = sharding.host_rows(steps.compute_logprobs(ref_model, {k: jb[k] for k in (
        "input_ids", "attention_mask", "pixel_values", "image_grid_thw", "window_start") + steps.MICRO_IMAGE_KEYS
        if k in jb}, window=window, group=G, num_micro_batches=cfg.ref_num_micro_batches))
    if P % mini_batches:
        raise ValueError(f"{P} prompts do not split into {mini_batches} mini-batches")
    per = P // mini_batches
    t1 = time.perf_counter()
    step_metrics = []
    for m in range(mini_batches):
        idx = np.arange(m * per * G, (m + 1) * per * G)
        mb = select_rows(batch, idx, image_token_id=tok_id, merge_size=merge)
        mb = loop.micro_batch_images(state.model, mb, cfg.num_micro_batches, G)
        state, met = steps.grpo_step(state, loop.place_batch(state.model, mb), cfg, window=window, group=G)
        step_metrics.append({k: float(v) for k, v in met.items()})
    out = {k: float(np.mean([s[k] for s in step_metrics])) for k in step_metrics[0]}
    out["time/ref_logprobs_s"], out["time/update_s"] = t1 - t0, time.perf_counter() - t1
    # rollout figures over the global batch: every host's groups (one process: its own)
    g = sharding.gather_rows
    keep = g(valid).astype(bool)
    out.update(grpo.rollout_metrics(g(np.asarray(rewards))[keep], g(adv.reshape(P, G))[keep],
                                    g(np.asarray(lengths).reshape(P, G))[keep],
                                    ~g(np.asarray(gen.finished).reshape(P, G))[keep]))
    return out


def cut_at_tokens(gen, banned_ids):
    """Ends each row before its first banned token (image / vision markers a model may emit).

    Such a token cannot be fed back as text (it would claim an image that is not there), so the
    response is cut just before it and counted as unfinished (truncated): it gets the incomplete
    reward and its remaining tokens are padding. Returns a new GenerationOutput (numpy).
    """
    from grlhfv_jax.rollout import GenerationOutput
    tokens, lengths = np.asarray(gen.tokens).copy(), np.asarray(gen.lengths).copy()
    finished, logprobs = np.asarray(gen.finished).copy(), np.asarray(gen.logprobs).copy()
    live = response_mask(lengths, tokens.shape[1]).astype(bool)
    bad = np.isin(tokens, np.asarray(list(banned_ids))) & live
    for r in np.flatnonzero(bad.any(axis=1)):
        cut = int(np.argmax(bad[r]))
        lengths[r], finished[r] = cut, False
        logprobs[r, cut:] = 0.0
    return GenerationOutput(tokens, logprobs, lengths, finished)
