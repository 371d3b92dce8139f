"""GRPO: group-relative advantages and the clipped policy loss with a k3 KL term (verl semantics).

Pure and jittable. Shapes: ``B`` sequences, ``T`` tokens; log-probs and masks ``[B, T]`` aligned
with the tokens they score (see `logprobs.aligned_logprobs`); the mask is 1 on response tokens.
Alternatives live in registries (`ADVANTAGE_ESTIMATORS`, `KL_ESTIMATORS`, `LOSS_AGGREGATIONS`,
`POLICY_LOSSES`) and are chosen by name in the config.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from grlhfv_jax.rl.logprobs import _f32, masked_mean

# ------------------------------------------------------------------------------------ advantages


def _group_stats(rewards: jax.Array):
    rewards = _f32(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [num_groups, group_size], got shape {rewards.shape}")
    k = rewards.shape[1]
    if k == 1:  # verl: a group of one has mean 0 and std 1
        return rewards, jnp.zeros_like(rewards[:, :1]), jnp.ones_like(rewards[:, :1])
    mean = jnp.mean(rewards, axis=1, keepdims=True)
    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)
    return rewards, mean, std


def group_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """GRPO outcome advantages ``[G, K]``: (r - mean_g) / (std_g + eps), std with ddof=1.
    Flatten (row-major) to match responses ordered group by group."""
    r, mean, std = _group_stats(rewards)
    return (r - mean) / (std + eps)


def group_advantages_no_std(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Dr. GRPO / verl ``norm_adv_by_std_in_grpo=False``: r - mean_g."""
    del eps
    r, mean, _ = _group_stats(rewards)
    return r - mean


def rloo_advantages(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """RLOO: r_i - mean_{j != i} r_j (group of one: r_i)."""
    del eps
    r = _f32(rewards)
    k = r.shape[1]
    if k == 1:
        return r
    baseline = (jnp.sum(r, axis=1, keepdims=True) - r) / (k - 1)
    return r - baseline


ADVANTAGE_ESTIMATORS: dict[str, Callable[..., jax.Array]] = {
    "grpo": group_advantages,
    "grpo_no_std": group_advantages_no_std,
    "rloo": rloo_advantages,
}


def compute_advantages(rewards: jax.Array, estimator: str = "grpo", **kwargs) -> jax.Array:
    """Advantages ``[G, K]`` by estimator name."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](rewards, **kwargs)


def pooled_advantages(rewards: jax.Array, groups: np.ndarray, estimator: str = "grpo") -> jax.Array:
    """Advantages ``[P, G]`` for rewards ``[P, G]`` whose prompt rows are pooled into advantage
    groups: ``groups [P]`` (ints, static) gives each row's group id; the rows of one group (every
    id must appear equally often, k times) form one group of k * G responses, in row order, for
    ``estimator``. ``groups = arange(P)``: one group per prompt (`compute_advantages`).

    Example, the GRM's two presentation orders of each pair (`grm_rl`'s `pool_orders`): rows n..2n-1
    are rows 0..n-1 swapped, groups = [0..n-1, 0..n-1], so each pair's 2G judgments are one group."""
    groups = np.asarray(groups)
    P, G = rewards.shape
    ids, counts = np.unique(groups, return_counts=True)
    if groups.shape != (P,) or np.any(counts != counts[0]):
        raise ValueError(
            f"pooled_advantages: groups {groups.tolist()} must give each of the {P} rows an id, every id equally often"
        )
    order = np.argsort(groups, kind="stable")  # rows of group 0, then group 1, ...
    pooled = rewards[order].reshape(len(ids), counts[0] * G)  # [groups, k*G]
    adv = compute_advantages(pooled, estimator).reshape(P, G)
    return adv[np.argsort(order)]  # back to row order


# ---------------------------------------------------------------------------------- KL estimators


def kl_k1(logp, ref_logp):
    """k1: logp - ref_logp (unbiased, high variance)."""
    return logp - ref_logp


def kl_k2(logp, ref_logp):
    """k2: 0.5 (logp - ref_logp)^2."""
    return 0.5 * jnp.square(logp - ref_logp)


def kl_abs(logp, ref_logp):
    return jnp.abs(logp - ref_logp)


def kl_k3(logp, ref_logp):
    """k3 / verl "low_var_kl": kl = ref_logp - logp (clamped to [-20, 20] as verl does, so exp stays
    finite); exp(kl) - kl - 1 clamped to [-10, 10]."""
    kl = jnp.clip(ref_logp - logp, -20.0, 20.0)
    return jnp.clip(jnp.exp(kl) - kl - 1.0, -10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "low_var_kl": kl_k3,
    "abs": kl_abs,
}


def kl_penalty(logp, ref_logp, estimator: str = "k3") -> jax.Array:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; registered: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logp, ref_logp)


def kl_penalized_rewards(scores, logp, ref_logp, mask, kl_coef: float, estimator: str = "k1"):
    """KL in the reward (the alternative to the KL loss term): token rewards ``[B, T]`` holding the
    sequence score ``scores [B]`` at each row's last masked token, minus ``kl_coef * kl`` on every
    masked token (verl ``apply_kl_penalty``). ``.sum(-1)`` gives the penalised sequence reward."""
    mask = _f32(mask)
    t = mask.shape[1]
    last = (t - 1) - jnp.argmax(mask[:, ::-1], axis=1)
    at_last = jax.nn.one_hot(last, t, dtype=mask.dtype) * (jnp.sum(mask, axis=1, keepdims=True) > 0)
    kl = kl_penalty(logp, ref_logp, estimator)
    return at_last * _f32(scores)[:, None] - kl_coef * kl * mask


# ---------------------------------------------------------------------------- loss aggregation


def agg_token_mean(loss_mat, mask, denominator=None):
    """Mean over all masked tokens of the batch (``denominator`` = token count to divide by)."""
    return masked_mean(loss_mat, mask, denominator)


def agg_seq_mean_token_sum(loss_mat, mask, denominator=None):
    """Sum over each row's tokens, mean over rows (``denominator`` = number of rows)."""
    per_seq = jnp.sum(loss_mat * mask, axis=-1)
    return jnp.sum(per_seq) / (loss_mat.shape[0] if denominator is None else denominator)


def agg_seq_mean_token_mean(loss_mat, mask, denominator=None):
    """Token mean within each row (empty row -> 0), mean over rows (``denominator`` = rows)."""
    mask = _f32(mask)
    per_seq = jnp.sum(loss_mat * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.sum(per_seq) / (loss_mat.shape[0] if denominator is None else denominator)


LOSS_AGGREGATIONS: dict[str, Callable] = {
    "token-mean": agg_token_mean,
    "seq-mean-token-sum": agg_seq_mean_token_sum,
    "seq-mean-token-mean": agg_seq_mean_token_mean,
}


# -------------------------------------------------------------------------------- policy loss


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    kl_coef: float = 0.02,
    clip_eps_high: float | None = None,
    clip_ratio_c: float | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    kl_estimator: str = "k3",
    loss_agg_mode: str = "token-mean",
    denominator: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """GRPO loss = pg_loss + kl_coef * kl - entropy_coef * entropy (verl ``dp_actor``).

    pg: ratio = exp(logp - old_logp) (log-ratio clamped to [-20, 20]); per token
    max(-A ratio, -A clip(ratio, 1 - clip_eps, 1 + clip_eps_high)); with ``clip_ratio_c`` (dual
    clip, verl) tokens with A < 0 are further capped at -A * clip_ratio_c.
    kl: ``kl_estimator`` of (logp, ref_logp), k3 by default; skipped when ``ref_logp`` is None; it adds nothing when
    ``kl_coef`` is 0 (then kl is still reported). Every term is aggregated over ``mask`` by ``loss_agg_mode``; an all-zero
    mask gives 0. ``denominator`` replaces the aggregation's count (tokens for token-mean, rows
    for seq-mean-*), so micro-batch losses computed with the mini-batch count sum to the
    mini-batch loss; the token-mean metrics use it too.

    Args: logp, old_logp, ref_logp, mask ``[B, T]``; advantages ``[B]`` or ``[B, T]``;
    entropy ``[B, T]`` or None. Returns (scalar loss, dict of scalar metrics).
    """
    if loss_agg_mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}; registered: {sorted(LOSS_AGGREGATIONS)}")
    agg = LOSS_AGGREGATIONS[loss_agg_mode]
    mask = _f32(mask)
    logp = _f32(logp)
    old_logp = _f32(old_logp)
    adv = _f32(advantages)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logp.shape)
    clip_high = clip_eps if clip_eps_high is None else clip_eps_high
    tok_den = denominator if loss_agg_mode == "token-mean" else None  # for token-mean metrics

    log_ratio = jnp.clip(logp - old_logp, -20.0, 20.0)
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_high)
    clipped = jnp.maximum(pg1, pg2)
    pg_losses = clipped
    clip_frac_lower = jnp.zeros(())
    if clip_ratio_c is not None:
        pg3 = -adv * clip_ratio_c
        pg_losses = jnp.where(adv < 0, jnp.minimum(pg3, clipped), clipped)
        clip_frac_lower = masked_mean(((clipped > pg3) & (adv < 0)).astype(mask.dtype), mask, tok_den)

    pg_loss = agg(pg_losses, mask, denominator)
    loss = pg_loss
    metrics = {
        "pg_loss": pg_loss,
        "clip_frac": masked_mean((pg2 > pg1).astype(mask.dtype), mask, tok_den),
        "clip_frac_lower": clip_frac_lower,
        "ppo_kl": masked_mean(-log_ratio, mask, tok_den),  # verl: mean(old - new)
        "approx_kl": masked_mean(0.5 * jnp.square(log_ratio), mask, tok_den),  # TRL-style
        "ratio_mean": masked_mean(ratio, mask, tok_den),
    }
    if ref_logp is not None:
        kl = agg(kl_penalty(logp, _f32(ref_logp), kl_estimator), mask, denominator)
        loss = loss + kl_coef * kl
        metrics["kl"] = kl
    if entropy is not None:
        ent = agg(_f32(entropy), mask, denominator)
        loss = loss - entropy_coef * ent
        metrics["entropy"] = ent
    metrics["loss"] = loss
    return loss, metrics


POLICY_LOSSES: dict[str, Callable[..., tuple[jax.Array, dict]]] = {
    "grpo": policy_loss,
    "ppo_clip": policy_loss,
}


def register_policy_loss(name: str, fn: Callable[..., tuple[jax.Array, dict]]) -> None:
    """Adds a policy loss under ``name`` (config key ``policy_loss``). ``fn`` takes the arguments
    of `policy_loss` (all keywords after ``mask``) and returns (scalar loss, dict of scalar
    metrics); the dict must hold the same keys on every call of a step."""
    POLICY_LOSSES[name] = fn


# ---------------------------------------------------------------------------- rollout metrics


def rollout_metrics(rewards, advantages=None, response_lengths=None, truncated=None) -> dict[str, float]:
    """Batch metrics computed outside the step (numpy; verl/TRL names; stds with ddof=1).

    rewards ``[G, K]``; advantages per response (any shape with G*K entries); response_lengths
    ``[G*K]`` tokens; truncated ``[G*K]`` bool (hit the length limit).
    """

    def std(x):  # torch.std's default (ddof=1), as verl / TRL log it
        return float(x.std(ddof=1)) if x.size > 1 else 0.0

    r = np.asarray(rewards, np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be [num_groups, group_size], got shape {r.shape}")
    out = {
        "reward/mean": float(r.mean()),
        "reward/std": std(r),
        "reward/max": float(r.max()),
        "reward/min": float(r.min()),
        "reward/frac_groups_zero_std": float(np.mean(r.max(1) - r.min(1) == 0)),
        "reward/mean_group_std": float(r.std(1, ddof=1).mean()) if r.shape[1] > 1 else 0.0,
    }
    if advantages is not None:
        a = np.asarray(advantages, np.float64).reshape(-1)
        out.update(
            {
                "advantages/mean": float(a.mean()),
                "advantages/std": std(a),
                "advantages/max": float(a.max()),
                "advantages/min": float(a.min()),
            }
        )
    if response_lengths is not None:
        ln = np.asarray(response_lengths, np.float64).reshape(-1)
        out.update(
            {
                "response_length/mean": float(ln.mean()),
                "response_length/max": float(ln.max()),
                "response_length/min": float(ln.min()),
            }
        )
    if truncated is not None:
        out["response_length/clip_ratio"] = float(np.mean(np.asarray(truncated, bool)))
    return out
