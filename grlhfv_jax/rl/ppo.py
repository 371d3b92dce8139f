"""PPO with a critic (the score-only-RM baseline of the paper's Table 2): token rewards with the KL in the
reward, GAE over ragged response masks, advantage whitening, the clipped value loss.

Pure and jittable. Shapes: ``N`` sequences, ``T`` columns; every ``[N, T]`` array is aligned with the
tokens of the rows (as `logprobs.aligned_logprobs`): column t holds what belongs to token t, and
``mask [N, T]`` is 1 on response tokens. Rows are ragged: a row's response may start after prompt
columns (mask 0) and end before the row does (padding, mask 0). ``values[:, t]`` is the critic's value
of the state *before* token t (the prefix ``tokens[:, :t]``: the hidden state that also predicts token t).

The policy loss is `grpo.policy_loss` (registry `grpo.POLICY_LOSSES`) with token-level advantages
``[N, T]`` and no KL term (PPO puts the KL in the reward). Registries by name, chosen in the config:
`ADVANTAGE_ESTIMATORS` (token-level, unlike `grpo.ADVANTAGE_ESTIMATORS` which is per response) and
`VALUE_LOSSES`. The conventions follow align-anything / safe-rlhf's PPO (the paper's baseline trainer):
k1 KL in the reward, score on the last response token, 0.5 (max of clipped and unclipped squared error).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from grlhfv_jax.rl import grpo
from grlhfv_jax.rl.logprobs import _f32, masked_mean

# ------------------------------------------------------------------------------------ token rewards


def token_rewards(
    scores, logp, ref_logp, mask, *, kl_coef: float, score_clip: float, kl_estimator: str = "k1"
) -> tuple[jax.Array, dict]:
    """Per-token rewards ``[N, T]`` for GAE: ``clip(score, -score_clip, score_clip)`` on each row's last
    response token, minus ``kl_coef * kl`` on every response token, 0 off the mask (a row with an empty
    mask gets nothing). ``kl`` is the per-token estimate of KL(policy || reference) by
    `grpo.KL_ESTIMATORS` name; k1 (``logp - ref_logp``, as align-anything / safe-rlhf / TRL PPO) is the
    PPO convention.

    Args: scores ``[N]`` (the RM's scalar per response); logp (the sampling policy's, i.e. the old
    log-probs), ref_logp, mask ``[N, T]``. Returns (rewards ``[N, T]`` float32, metrics): ``score_mean``
    (clipped), ``score_clip_frac`` (rows whose score was clipped), ``kl_token_mean`` (kl over response
    tokens), ``kl_seq_mean`` (per-row kl sum, mean over rows).
    """
    scores = _f32(scores)
    clipped = jnp.clip(scores, -score_clip, score_clip)
    rewards = grpo.kl_penalized_rewards(clipped, logp, ref_logp, mask, kl_coef, kl_estimator)
    mask = _f32(mask)
    kl = grpo.kl_penalty(_f32(logp), _f32(ref_logp), kl_estimator) * mask
    metrics = {
        "score_mean": jnp.mean(clipped),
        "score_clip_frac": jnp.mean((jnp.abs(scores) > score_clip).astype(jnp.float32)),
        "kl_token_mean": masked_mean(kl, mask),
        "kl_seq_mean": jnp.mean(jnp.sum(kl, axis=1)),
    }
    return rewards * mask, metrics


# ---------------------------------------------------------------------------------------------- GAE


def gae(rewards, values, mask, *, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over ragged response masks: (advantages, returns), ``[N, T]``.

    Backwards over the response tokens t of each row (columns with mask 0 are skipped: they neither
    read nor change the running quantities, and get 0)::

        delta_t = r_t + gamma * V_next - V_t        V_next: the value of the row's next response token,
        A_t     = delta_t + gamma * lam * A_next    0 after its last one (the episode ends there)
        R_t     = A_t + V_t                          (the value target)

    Args: rewards (`token_rewards`), values (old values from the critic), mask ``[N, T]``; gamma, lam
    floats. Values and rewards off the mask are ignored. float32 out.
    """
    rewards, values, mask = _f32(rewards), _f32(values), _f32(mask)

    def back(carry, x):
        next_v, next_a = carry
        r, v, m = x
        a = r + gamma * next_v - v + gamma * lam * next_a
        on = m > 0
        return (jnp.where(on, v, next_v), jnp.where(on, a, next_a)), jnp.where(on, a, 0.0)

    zero = jnp.zeros(rewards.shape[0], rewards.dtype)
    _, adv = jax.lax.scan(back, (zero, zero), (rewards.T, values.T, mask.T), reverse=True)
    adv = adv.T
    return adv, (adv + values) * mask


def whiten(x, mask, *, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries of the whole batch (var with Bessel's
    correction, as verl / TRL ``masked_whiten``); ``shift_mean=False`` adds the mean back. 0 off the mask.
    x, mask ``[N, T]``. A mask of fewer than 2 entries leaves the variance 0 (no division by 0)."""
    x, mask = _f32(x), _f32(mask)
    n = jnp.sum(mask)
    mean = jnp.sum(x * mask) / jnp.maximum(n, 1.0)
    var = jnp.sum(jnp.square(x - mean) * mask) / jnp.maximum(n - 1.0, 1.0)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae_advantages(rewards, values, mask, *, gamma: float, lam: float, whiten_advantages: bool):
    """`gae`, the advantages whitened over the mask when ``whiten_advantages`` (the returns never are).
    Returns (advantages, returns) ``[N, T]``."""
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        adv = whiten(adv, mask)
    return adv, ret


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "gae": gae_advantages,
}


def compute_advantages(rewards, values, mask, estimator: str = "gae", **kwargs) -> tuple[jax.Array, jax.Array]:
    """Token-level (advantages, returns) ``[N, T]`` by estimator name (`ADVANTAGE_ESTIMATORS`)."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown token advantage estimator {estimator!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](rewards, values, mask, **kwargs)


# --------------------------------------------------------------------------------------- value loss


def clipped_value_loss(
    values,
    old_values,
    returns,
    mask,
    *,
    value_clip: float,
    loss_agg_mode: str = "token-mean",
    denominator: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """PPO's clipped value loss: ``0.5 * agg(max((v - R)^2, (v_clip - R)^2))`` with
    ``v_clip = old + clip(v - old, -value_clip, value_clip)`` (the 0.5 factor as align-anything /
    safe-rlhf / verl). ``agg`` by `grpo.LOSS_AGGREGATIONS` name (token-mean: over all masked tokens of
    the batch); ``denominator`` replaces its count (micro-batches, as `grpo.policy_loss`).

    Args: values (the critic now), old_values (the critic at rollout time), returns (`gae`), mask
    ``[N, T]``. Returns (scalar loss, metrics): ``vf_loss``, ``vf_clip_frac`` (tokens where the clipped
    error is the larger), ``vpred_mean``, ``value_error`` (token-mean squared error, unclipped).
    """
    if loss_agg_mode not in grpo.LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; registered: {sorted(grpo.LOSS_AGGREGATIONS)}")
    agg = grpo.LOSS_AGGREGATIONS[loss_agg_mode]
    values, old_values, returns, mask = _f32(values), _f32(old_values), _f32(returns), _f32(mask)
    v_clip = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
    err1 = jnp.square(values - returns)
    err2 = jnp.square(v_clip - returns)
    loss = 0.5 * agg(jnp.maximum(err1, err2), mask, denominator)
    tok_den = denominator if loss_agg_mode == "token-mean" else None
    metrics = {
        "vf_loss": loss,
        "vf_clip_frac": masked_mean((err2 > err1).astype(jnp.float32), mask, tok_den),
        "vpred_mean": masked_mean(values, mask, tok_den),
        "value_error": masked_mean(err1, mask, tok_den),
    }
    return loss, metrics


VALUE_LOSSES: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    "clipped": clipped_value_loss,
}


# -------------------------------------------------------------------------------------- policy loss


def ppo_policy_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_eps: float,
    policy_loss: str = "ppo_clip",
    loss_agg_mode: str = "token-mean",
    denominator: jax.Array | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
) -> tuple[jax.Array, dict]:
    """The clipped surrogate with token-level advantages ``[N, T]``: the policy loss ``policy_loss`` of
    `grpo.POLICY_LOSSES` (``ppo_clip`` = `grpo.policy_loss`) with no KL term (ref_logp None, kl_coef 0:
    the KL is in the reward). Per token ``max(-A ratio, -A clip(ratio, 1 - clip_eps, 1 + clip_eps))``,
    ``ratio = exp(logp - old_logp)``, aggregated by ``loss_agg_mode``. logp, old_logp, advantages, mask
    (and entropy) ``[N, T]``. Returns (scalar loss, metrics as `grpo.policy_loss`)."""
    if policy_loss not in grpo.POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {policy_loss!r}; registered: {sorted(grpo.POLICY_LOSSES)}")
    return grpo.POLICY_LOSSES[policy_loss](
        logp,
        old_logp,
        None,
        advantages,
        mask,
        clip_eps=clip_eps,
        kl_coef=0.0,
        entropy=entropy,
        entropy_coef=entropy_coef,
        loss_agg_mode=loss_agg_mode,
        denominator=denominator,
    )
