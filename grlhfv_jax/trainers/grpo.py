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
    select_rows,
    training_rows,
)


def response_advantages(rewards: np.ndarray, row_valid: np.ndarray, estimator: str) -> np.ndarray:
    """Advantages per response ``[P*G]`` from rewards ``[P, G]`` by the registered ``estimator``
    (`grpo.ADVANTAGE_ESTIMATORS`); rows with ``row_valid`` 0 (fill prompts) get 0."""
    adv = np.asarray(grpo.compute_advantages(jnp.asarray(rewards, jnp.float32), estimator))
    return adv.reshape(-1) * row_valid


def sampled_batch(model, prompts: dict, gen, *, pad_id: int) -> tuple[dict, np.ndarray, int]:
    """The training rows of P prompts' G samples each (`trainers.rows`): input_ids, attention_mask,
    images, response_mask [P*G, Tp + R] (0 on fill rows: `prompts["valid"]` 0), old_logp (the
    sampler's log-probs on the response columns), window_start [P*G] = Tp. Returns (batch, valid
    [P], window R): the LM head runs only on the response columns [Tp, Tp + R), and the G rows of a
    prompt share columns [0, Tp), which the model runs once per prompt (group = G)."""
    tokens, lengths = np.asarray(gen.tokens), np.asarray(gen.lengths)
    P = int(np.shape(prompts["input_ids"])[0])
    G = tokens.shape[0] // P
    valid = np.asarray(prompts.get("valid", np.ones(P, np.int32)))
    base = {k: v for k, v in prompts.items() if k not in ("valid", "loss_mask", "mm_token_type_ids")}
    rows = repeat_rows(base, G, model.image_layout)
    batch = training_rows(rows, tokens, lengths, pad_id=pad_id)
    batch["response_mask"] = batch["response_mask"] * np.repeat(valid, G)[:, None]
    Tp = base["input_ids"].shape[1]
    lp = np.asarray(gen.logprobs) * response_mask(lengths, tokens.shape[1])
    batch["old_logp"] = np.concatenate([np.zeros((P * G, Tp), np.float32), lp.astype(np.float32)], axis=1)
    batch["window_start"] = np.full(P * G, Tp, np.int32)
    return batch, valid, int(tokens.shape[1])


def reference_logprobs(ref_model, batch: dict, *, window: int, group: int, num_micro_batches: int) -> np.ndarray:
    """The frozen reference model's log-probs [B, T] of `batch`'s tokens (teacher forced, the LM
    head on the response window), this host's rows, in `num_micro_batches` slices of whole groups
    (memory only: the same values); each slice runs the vision tower on its own images."""
    jb = loop.place_batch(ref_model, loop.micro_batch_images(ref_model, batch, num_micro_batches, group))
    return sharding.host_rows(
        steps.compute_logprobs(
            ref_model,
            {
                k: jb[k]
                for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "window_start")
                + steps.MICRO_IMAGE_KEYS
                if k in jb
            },
            window=window,
            group=group,
            num_micro_batches=num_micro_batches,
        )
    )


def mini_batches_of(model, batch: dict, *, prompts: int, group: int, mini_batches: int, num_micro_batches: int):
    """Yields the `mini_batches` consecutive slices of `prompts` * `group` rows (whole prompt groups,
    with their images, split per micro-batch), each placed on `model`'s mesh."""
    if prompts % mini_batches:
        raise ValueError(f"{prompts} prompts do not split into {mini_batches} mini-batches")
    per = prompts // mini_batches * group
    for m in range(mini_batches):
        mb = select_rows(batch, np.arange(m * per, (m + 1) * per), model.image_layout)
        yield loop.place_batch(model, loop.micro_batch_images(model, mb, num_micro_batches, group))


def mean_metrics(step_metrics: list[dict]) -> dict:
    """The mean over mini-batch updates of each step metric (floats)."""
    return {k: float(np.mean([s[k] for s in step_metrics])) for k in step_metrics[0]}


def grpo_update(
    state,
    ref_model,
    prompts: dict,
    gen,
    rewards: np.ndarray,
    *,
    pad_id: int,
    cfg,
    mini_batches: int = 1,
    advantages: np.ndarray | None = None,
) -> dict:
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
    the global batch, `rollout.group_sampling.HostRowsRollout`); each mini-batch is every host's
    block m (one mini-batch: the one-process update); the rollout metrics cover every host's groups.
    Returns the mean of the step metrics plus rollout metrics, and the seconds of its two device
    phases: ``time/ref_logprobs_s`` (the reference pass) and ``time/update_s`` (the mini-batch
    updates; each step's metrics are read back, so the time is the device's, not a dispatch's).
    """
    P, G = rewards.shape
    batch, valid, window = sampled_batch(state.model, prompts, gen, pad_id=pad_id)
    row_valid = np.repeat(valid, G)
    if advantages is None:
        adv = response_advantages(rewards, row_valid, cfg.advantage_estimator)
    else:
        adv = np.asarray(advantages, np.float64).reshape(-1) * row_valid
    batch["advantages"] = adv.astype(np.float32)
    t0 = time.perf_counter()
    batch["ref_logp"] = reference_logprobs(
        ref_model, batch, window=window, group=G, num_micro_batches=cfg.ref_num_micro_batches
    )
    t1 = time.perf_counter()
    step_metrics = []
    for mb in mini_batches_of(
        state.model, batch, prompts=P, group=G, mini_batches=mini_batches, num_micro_batches=cfg.num_micro_batches
    ):
        state, met = steps.grpo_step(state, mb, cfg, window=window, group=G)
        step_metrics.append({k: float(v) for k, v in met.items()})
    out = mean_metrics(step_metrics)
    out["time/ref_logprobs_s"], out["time/update_s"] = t1 - t0, time.perf_counter() - t1
    # rollout figures over the global batch: every host's groups (one process: its own)
    g = sharding.gather_rows
    keep = g(valid).astype(bool)
    out.update(
        grpo.rollout_metrics(
            g(np.asarray(rewards))[keep],
            g(adv.reshape(P, G))[keep],
            g(np.asarray(gen.lengths).reshape(P, G))[keep],
            ~g(np.asarray(gen.finished).reshape(P, G))[keep],
        )
    )
    return out
