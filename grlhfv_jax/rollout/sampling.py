"""Token sampling: temperature, top-k, top-p (nucleus) and the log-probs the RL loss needs.

Pure, jittable functions on logits `[N, V]` float32. The order of the filters is transformers'
(temperature, then top-k, then top-p), and so are their tie rules:
- top-k keeps every token whose logit is >= the k-th largest (ties at the k-th are all kept);
- top-p keeps the smallest set of most likely tokens whose probability (after temperature and
  top-k) reaches `top_p`: a token is kept iff the mass of the strictly more likely tokens is
  < top_p (the most likely token is always kept).
Log-probs are always taken under the RAW logits (temperature 1, no filter): that is the policy's
probability that the RL loss differentiates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def top_k_mask(logits, k: int):
    """Bool [N, V]: True where the logit is among the k largest of its row (ties kept). k static > 0."""
    k = min(int(k), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return logits >= kth


def top_p_mask(logits, top_p, *, sorted_desc=None):
    """Bool [N, V]: True on the nucleus of mass `top_p` of softmax(logits) (-inf logits have mass 0).

    `sorted_desc` [N, K]: the K largest logits of each row, descending (defaults to a full sort);
    when the logits outside those K are -inf (after top-k) K = k gives the same answer cheaply.
    """
    if sorted_desc is None:
        sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p
    keep = keep.at[..., 0].set(True)
    n_keep = jnp.sum(keep, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)  # smallest kept logit
    return logits >= threshold


def filter_logits(logits, *, temperature=1.0, top_k: int = 0, top_p=1.0, use_top_p: bool | None = None):
    """Temperature-scaled logits with filtered-out tokens set to -inf. [N, V] float32.

    `top_k` (static int, 0 = off); `top_p` may be traced when `use_top_p` (static) is given,
    otherwise it must be a Python float and top-p is applied iff top_p < 1.
    """
    x = logits.astype(jnp.float32) / temperature
    if use_top_p is None:
        use_top_p = float(top_p) < 1.0
    sorted_desc = None
    if top_k and top_k > 0:
        k = min(int(top_k), x.shape[-1])
        vals = jax.lax.top_k(x, k)[0]
        x = jnp.where(x >= vals[..., -1:], x, NEG_INF)
        sorted_desc = vals
    if use_top_p:
        x = jnp.where(top_p_mask(x, top_p, sorted_desc=sorted_desc), x, NEG_INF)
    return x


def row_uniforms(key, n_rows: int, first_row=0, total_rows: int | None = None):
    """Uniforms in [0, 1), float32 [n_rows, 1]: rows first_row .. first_row + n_rows - 1 of
    `jax.random.uniform(key, (total_rows, 1))` (`first_row` may be traced; total_rows static,
    default n_rows). With jax's partitionable threefry (`jax_threefry_partitionable`, the default)
    a row's uniform depends on its index only, not on total_rows: a batch drawn in parts, each
    part with its first row's index, draws what one call over all rows draws."""
    if total_rows is None or total_rows == n_rows:
        return jax.random.uniform(key, (n_rows, 1), jnp.float32)
    return jax.lax.dynamic_slice(jax.random.uniform(key, (total_rows, 1), jnp.float32), (first_row, 0), (n_rows, 1))


def sample_from_logits(key, logits, *, block: int = 128, first_row=0, total_rows: int | None = None):
    """One token per row from softmax(logits) by inverse CDF with one uniform per row.

    logits [N, V] (-inf allowed) -> int32 [N]. A token with zero probability is never returned.
    Row r's uniform: `row_uniforms(key, N, first_row, total_rows)[r]` (default: uniform(key, (N, 1))).
    Exact up to float rounding of the cumulative sums. Two levels, so that no scan runs over the
    whole vocabulary (a length-V cumsum is the costliest op of a CPU decode step after the GEMMs):
    the vocabulary is cut into blocks of `block` tokens, u picks a block by the cumulative block
    masses [N, V / block], then a token by the cumulative masses inside that block [N, block].
    `jax.random.categorical` would draw V Gumbel variates per row (~50x slower on CPU).
    """
    N, V = logits.shape
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    nb = -(-V // block)
    blocks = jnp.pad(probs, ((0, 0), (0, nb * block - V))).reshape(N, nb, block)
    mass = jnp.sum(blocks, axis=-1)  # [N, nb]
    cdf = jnp.cumsum(mass, axis=-1)
    u = row_uniforms(key, N, first_row, total_rows) * cdf[:, -1:]
    # rounding guard: never step past the last block / token with nonzero mass
    last_block = nb - 1 - jnp.argmax((mass > 0)[:, ::-1], axis=-1)
    b = jnp.minimum(jnp.sum(cdf <= u, axis=-1), last_block)  # [N]
    inside = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0]  # [N, block]
    before = jnp.take_along_axis(cdf - mass, b[:, None], axis=1)  # mass of the blocks before b
    last_tok = block - 1 - jnp.argmax((inside > 0)[:, ::-1], axis=-1)
    t = jnp.minimum(jnp.sum(before + jnp.cumsum(inside, axis=-1) <= u, axis=-1), last_tok)
    return (b * block + t).astype(jnp.int32)


def token_logprobs(logits, tokens):
    """log softmax(logits)[tokens] per row. logits [N, V], tokens [N] -> float32 [N]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return picked - lse


def next_tokens(
    key,
    logits,
    *,
    greedy: bool,
    temperature,
    top_k: int,
    top_p,
    use_top_p: bool,
    first_row=0,
    total_rows: int | None = None,
):
    """Sample (or argmax when `greedy`) one token per row; returns (tokens int32 [N], raw log-probs [N]).
    first_row, total_rows: the rows' place in a larger draw (`row_uniforms`)."""
    if greedy:
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        tok = sample_from_logits(
            key,
            filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, use_top_p=use_top_p),
            first_row=first_row,
            total_rows=total_rows,
        )
    return tok, token_logprobs(logits, tok)
