"""Log-probabilities of given tokens from logits, and masked means. Pure, jittable."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange


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


def masked_mean(x: jax.Array, mask: jax.Array, denominator: jax.Array | None = None) -> jax.Array:
    """sum(x * mask) / denominator (default: sum(mask), at least 1, so an empty mask gives 0)."""
    mask = _f32(mask)
    total = jnp.sum(_f32(x) * mask)
    if denominator is None:
        denominator = jnp.sum(mask)
    return total / jnp.maximum(jnp.asarray(denominator, total.dtype), 1.0)


# ------------------------------------------------------------------ logits on a window of columns
# A loss that reads only some columns (a GRPO response, an SFT target) needs the LM head's logits
# only there: with a 1k-150k vocabulary the head is the largest matmul of a small model and the
# largest buffer of a large one. The window of row b is the target columns start[b] + [0, L).


def window_columns(start: jax.Array, length: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Target columns ``[B, length]`` (``start[:, None] + arange(length)``, clipped into
    ``[1, width)``) and their validity ``[B, length]`` bool (inside the row, not clipped)."""
    cols = jnp.asarray(start, jnp.int32)[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
    valid = (cols >= 1) & (cols < width)
    return jnp.clip(cols, 1, width - 1), valid


def gather_columns(x: jax.Array, cols: jax.Array) -> jax.Array:
    """``x[b, cols[b, j], ...]``: ``[B, T, ...]``, cols ``[B, L]`` -> ``[B, L, ...]``."""
    idx = cols.reshape(cols.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def scatter_columns(values: jax.Array, cols: jax.Array, valid: jax.Array, width: int) -> jax.Array:
    """Inverse of `gather_columns` for ``[B, L]`` values: ``[B, width]``, 0 off the window (and
    where ``valid`` is False)."""
    rows = jnp.arange(values.shape[0])[:, None]
    out = jnp.zeros((values.shape[0], width), values.dtype)
    return out.at[rows, cols].add(jnp.where(valid, values, 0))


def window_start_and_length(mask, multiple: int = 16) -> tuple[np.ndarray, int]:
    """Host side (numpy): for a target mask ``[B, T]`` (column 0 never counts), each row's first
    target column and the window length that covers every row's targets, rounded up to
    ``multiple`` (few distinct lengths = few compilations). A row with no target gets start 1."""
    m = np.asarray(mask)[:, 1:] != 0
    any_ = m.any(axis=1)
    first = np.where(any_, m.argmax(axis=1), 0) + 1
    last = np.where(any_, m.shape[1] - 1 - m[:, ::-1].argmax(axis=1), 0) + 1
    need = int((last - first + 1)[any_].max()) if any_.any() else 1
    length = min(-(-need // multiple) * multiple, m.shape[1])
    return first.astype(np.int32), int(length)


# ------------------------------------------------------------------ the LM head in chunks of columns
# With a 150k vocabulary the float32 logits of a training micro-batch are its largest buffers
# (rows x columns x V x 4 bytes, and as many again for their softmax in the backward pass): 32 rows
# x 1024 columns x 151,936 x 4 B = 19.9 GB each. Run in chunks of columns under `jax.checkpoint`,
# only [B, chunk, V] of them is live at once, in the forward pass and the backward pass (which
# recomputes a chunk's logits from its hidden states): the same numbers, one more head matmul.


def head_token_stats(
    head,
    h: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    chunk: int = 0,
    *,
    entropy: bool = False,
    argmax: bool = False,
) -> dict:
    """Per-token statistics of ``softmax(head(h) / temperature)`` for ``targets``.

    head: hidden ``[..., H]`` -> float32 logits ``[..., V]`` (``model.logits``); h ``[B, L, H]``;
    targets ``[B, L]`` int. Returns ``{"logp": [B, L]}`` (float32 log-probability of each target),
    with ``"entropy" [B, L]`` (nats) when `entropy` and ``"argmax_hit" [B, L]`` bool (the most
    likely token is the target) when `argmax`. ``chunk`` > 0: `chunk` columns at a time (a
    `jax.lax.scan` over ceil(L / chunk) pieces, each under `jax.checkpoint`): equal values, peak
    logits memory B x chunk x V instead of B x L x V."""

    def stats(h_c, t_c):
        logits = head(h_c) / temperature
        out = {"logp": token_logprobs(logits, t_c)}
        if entropy:
            out["entropy"] = token_entropy(logits)
        if argmax:
            out["argmax_hit"] = jnp.argmax(logits, axis=-1) == t_c
        return out

    L = h.shape[1]
    if not chunk or chunk >= L:
        return stats(h, targets)
    n = -(-L // chunk)
    hs = rearrange(jnp.pad(h, ((0, 0), (0, n * chunk - L), (0, 0))), "b (n c) d -> n b c d", c=chunk)
    ts = rearrange(jnp.pad(targets, ((0, 0), (0, n * chunk - L))), "b (n c) -> n b c", c=chunk)
    piece = jax.checkpoint(stats)
    _, out = jax.lax.scan(lambda carry, x: (carry, piece(*x)), None, (hs, ts))
    return jax.tree.map(lambda x: rearrange(x, "n b c -> b (n c)")[:, :L], out)
