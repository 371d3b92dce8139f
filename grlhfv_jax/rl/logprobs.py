"""Log-probabilities of given tokens from logits, and masked means. Pure, jittable."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _f32(x) -> jax.Array:
    """At least float32 (float64 stays float64 under x64, bf16 is upcast)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[..., tokens] in float32: logits ``[..., V]``, tokens ``[...]`` int."""
    logits = _f32(logits)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - logz


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy (nats) of softmax(logits) over the last axis, float32: ``[...]``."""
    logits = _f32(logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def shift_right(x: jax.Array, fill=0) -> jax.Array:
    """``out[:, 0] = fill, out[:, t] = x[:, t-1]``: turns "logits at t predict t+1" into values
    aligned with the token they score."""
    pad = jnp.full_like(x[:, :1], fill)
    return jnp.concatenate([pad, x[:, :-1]], axis=1)


def aligned_logprobs(logits: jax.Array, input_ids: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` (``out[:, 0] = 0``): ``[B, T]``.

    Logits ``[B, T, V]`` from a causal LM (position t predicts t+1), divided by ``temperature``
    as the sampler did. Aligned so a response mask over ``input_ids`` selects its log-probs.
    """
    lp = token_logprobs(logits[:, :-1] / temperature, input_ids[:, 1:])
    return jnp.pad(lp, ((0, 0), (1, 0)))


def aligned_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy of the distribution that produced token t, aligned like `aligned_logprobs`."""
    ent = token_entropy(logits[:, :-1] / temperature)
    return jnp.pad(ent, ((0, 0), (1, 0)))


def sequence_logprob(token_lp: jax.Array, mask: jax.Array, average: bool = False) -> jax.Array:
    """Sum (or mean) over ``mask`` of per-token log-probs ``[B, T]`` -> ``[B]``."""
    mask = _f32(mask)
    total = jnp.sum(token_lp * mask, axis=-1)
    if average:
        return total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return total


def masked_mean(x: jax.Array, mask: jax.Array, denominator: Optional[jax.Array] = None) -> jax.Array:
    """sum(x * mask) / denominator (default: sum(mask), at least 1, so an empty mask gives 0)."""
    mask = _f32(mask)
    total = jnp.sum(_f32(x) * mask)
    if denominator is None:
        denominator = jnp.sum(mask)
    return total / jnp.maximum(jnp.asarray(denominator, total.dtype), 1.0)
