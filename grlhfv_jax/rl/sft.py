"""Supervised fine-tuning loss: masked next-token cross-entropy. Pure, jittable."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grlhfv_jax.rl.logprobs import _f32, token_logprobs


def sft_loss(
    logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array, denominator: jax.Array | None = None
) -> tuple[jax.Array, dict]:
    """Token-mean of -log p(tokens[:, t+1] | logits[:, t]) over targets with loss_mask[:, t+1] = 1.

    logits ``[B, T, V]``, tokens and loss_mask ``[B, T]`` (the mask marks which *target* tokens
    count, aligned with ``tokens``; its first column is never used). ``denominator`` overrides the
    target count (for micro-batches). An all-zero mask gives loss 0.
    """
    return target_loss(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:], denominator)


def target_loss(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, denominator: jax.Array | None = None
) -> tuple[jax.Array, dict]:
    """`sft_loss` with the shift done: ``logits[b, j]`` predicts ``targets[b, j]``, counted where
    ``mask[b, j]`` ([B, L, V], [B, L], [B, L]; L any window of columns)."""
    return token_loss(token_logprobs(logits, targets), jnp.argmax(logits, axis=-1) == targets, mask, denominator)


def token_loss(
    lp: jax.Array, hit: jax.Array, mask: jax.Array, denominator: jax.Array | None = None
) -> tuple[jax.Array, dict]:
    """`target_loss` from per-target log-probs ``lp [B, L]`` and ``hit [B, L]`` (the most likely
    token is the target), as `logprobs.head_token_stats` gives them."""
    mask = _f32(mask)
    count = jnp.sum(mask)
    den = jnp.maximum(count if denominator is None else jnp.asarray(denominator, lp.dtype), 1.0)
    loss = -jnp.sum(lp * mask) / den
    correct = hit.astype(mask.dtype)
    metrics = {"loss": loss, "accuracy": jnp.sum(correct * mask) / den, "num_tokens": count}
    return loss, metrics
