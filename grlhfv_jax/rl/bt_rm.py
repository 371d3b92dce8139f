"""Score-only reward model baseline: Bradley-Terry loss (align-anything's form). Pure, jittable."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grlhfv_jax.rl.logprobs import _f32


def bt_loss(
    r_chosen: jax.Array, r_rejected: jax.Array, *, reg: float = 0.001, weights: jax.Array | None = None
) -> tuple[jax.Array, dict]:
    """-log sigmoid(r_w - r_l), mean over pairs, + ``reg`` * mean(r^2) over chosen and rejected.

    r_chosen, r_rejected: ``[B]`` scalar rewards. ``weights [B]`` (1 = real pair, 0 = padding)
    makes both means weighted; all-zero weights give loss 0. Returns (loss, metrics).
    """
    rc, rr = _f32(r_chosen), _f32(r_rejected)
    w = jnp.ones_like(rc) if weights is None else _f32(weights)
    n = jnp.maximum(jnp.sum(w), 1.0)
    margin = rc - rr
    nll = jnp.sum(-jax.nn.log_sigmoid(margin) * w) / n
    sq = jnp.sum((jnp.square(rc) + jnp.square(rr)) * w) / (2 * n)
    loss = nll + reg * sq
    metrics = {
        "loss": loss,
        "bt_nll": nll,
        "accuracy": jnp.sum((margin > 0) * w) / n,
        "margin": jnp.sum(margin * w) / n,
        "reward_chosen": jnp.sum(rc * w) / n,
        "reward_rejected": jnp.sum(rr * w) / n,
    }
    return loss, metrics
