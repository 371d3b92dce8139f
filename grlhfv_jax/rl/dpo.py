"""DPO baseline losses on sequence log-probs. Pure, jittable.

Inputs are the summed response log-probs ``[B]`` of the policy and the frozen reference for the
chosen and rejected responses (`logprobs.sequence_logprob`). For IPO, pass length-averaged
log-probs (``average=True``), as TRL does.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from grlhfv_jax.rl.logprobs import _f32


def _sigmoid_loss(h, beta, label_smoothing):
    """-(1-ls) log sigmoid(beta h) - ls log sigmoid(-beta h) (Rafailov et al.; cDPO smoothing)."""
    return -(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h) - label_smoothing * jax.nn.log_sigmoid(-beta * h)


def _ipo_loss(h, beta, label_smoothing):
    """(h - 1/(2 beta))^2 (Azar et al.)."""
    del label_smoothing
    return jnp.square(h - 1.0 / (2.0 * beta))


DPO_LOSSES: dict[str, Callable] = {"sigmoid": _sigmoid_loss, "ipo": _ipo_loss}


def dpo_loss(
    policy_chosen,
    policy_rejected,
    ref_chosen,
    ref_rejected,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """h = (pi_c - ref_c) - (pi_r - ref_r); loss per pair by ``loss_type``, mean over pairs.

    Implicit rewards beta (pi - ref) give the metrics: rewards_chosen/rejected, accuracy
    (chosen reward > rejected), margin. ``weights [B]`` masks padded pairs.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; registered: {sorted(DPO_LOSSES)}")
    pc, pr, rc, rr = (_f32(x) for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    w = jnp.ones_like(pc) if weights is None else _f32(weights)
    n = jnp.maximum(jnp.sum(w), 1.0)
    h = (pc - rc) - (pr - rr)
    losses = DPO_LOSSES[loss_type](h, beta, label_smoothing)
    loss = jnp.sum(losses * w) / n
    chosen_r = beta * (pc - rc)
    rejected_r = beta * (pr - rr)
    metrics = {
        "loss": loss,
        "rewards_chosen": jnp.sum(chosen_r * w) / n,
        "rewards_rejected": jnp.sum(rejected_r * w) / n,
        "accuracy": jnp.sum((chosen_r > rejected_r) * w) / n,
        "margin": jnp.sum((chosen_r - rejected_r) * w) / n,
        "logps_chosen": jnp.sum(pc * w) / n,
        "logps_rejected": jnp.sum(pr * w) / n,
    }
    return loss, metrics
