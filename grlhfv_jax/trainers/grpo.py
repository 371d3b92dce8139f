"""One GRPO update on sampled groups (`grpo_update`): training rows (`trainers.rows`),
advantages, reference log-probs, and the mini-batch updates. The step around it (rollout,
reward function, advantage groups) is `trainers.learner`."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from grlhfv_jax import sharding
from grlhfv_jax.rl import grpo
from grlhfv_jax.trainers import loop, steps
from grlhfv_jax.trainers.rows import (  # noqa: F401  (re-exported: the row layout of a GRPO batch)
    pad_columns,
    repeat_rows,
    response_mask,
    rows_image_slices,
    select_rows,
    training_rows,
)


def response_advantages(rewards: np.ndarray, row_valid: np.ndarray, estimator: str) -> np.ndarray:
    """Advantages per response ``[P*G]`` from rewards ``[P, G]`` by the registered ``estimator``
    (`grpo.ADVANTAGE_ESTIMATORS`); rows with ``row_valid`` 0 (fill prompts) get 0."""
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

