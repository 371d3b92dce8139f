"""PPO with a critic (the score-only-RM baseline): the critic's per-token values, the rollout-time targets,
and the jitted policy and value updates, over the batches and micro-batch engine of `trainers.steps`.

The critic is a model of any family built with a scalar head (``scalar_head=True``, e.g. initialised from
the score-only RM) and kept apart from the policy; all it must offer beyond the steps' model contract
(docs/internal_api.md) is ``model.score_hidden(h) -> [...]``, the scalar head on final hidden states
``[..., H]``. Its value of token t is the head on the hidden state that predicts token t (the state
before t: the prefix ``input_ids[:, :t]``), so values line up with log-probs.

Batches are `trainers.steps`' (rows ``[prompt | response]``, ``input_ids``, ``attention_mask``, images,
``response_mask [B, T]``; with ``window`` > 0 ``window_start [B]``), every per-token array ``[B, T]``
aligned with ``input_ids`` (column t belongs to token t, 0 off the response window):
- `compute_values`: -> values ``[B, T]`` (the rollout's ``old_values``);
- `ppo_targets`: RM scores ``[B]``, old / reference log-probs, old values -> advantages, returns ``[B, T]``;
- `ppo_policy_step` reads ``old_logp``, ``advantages [B, T]``;
- `value_step` reads ``old_values``, ``returns [B, T]``.
``window`` / ``group`` / ``num_micro_batches`` mean what they mean in `trainers.steps`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from grlhfv_jax.rl import ppo
from grlhfv_jax.rl.logprobs import scatter_columns
from grlhfv_jax.trainers.steps import (
    TrainState,
    _accumulate_grads,
    _aligned,
    _apply,
    _check_group,
    _forward,
    _forward_micro,
    _require,
    _window_hidden,
)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Static PPO settings (no defaults: the config schema's ``policy_ppo_rm`` section owns them).

    gamma, lam: GAE discount and lambda. whiten: whiten the advantages over the batch's response tokens.
    clip_eps: policy ratio clip. value_clip: the value's clip around its rollout value. score_clip: the RM
    score is clipped to [-score_clip, score_clip]. kl_coef, kl_estimator: the KL in the reward (k1).
    advantage_estimator (`ppo.ADVANTAGE_ESTIMATORS`), policy_loss (`grpo.POLICY_LOSSES`), value_loss
    (`ppo.VALUE_LOSSES`), loss_agg_mode (`grpo.LOSS_AGGREGATIONS`): registry names. temperature: the
    sampler's (log-probs of logits / temperature). compute_entropy: report the policy's entropy (no
    bonus). num_micro_batches: of each policy and value update."""

    gamma: float
    lam: float
    whiten: bool
    clip_eps: float
    value_clip: float
    score_clip: float
    kl_coef: float
    kl_estimator: str
    advantage_estimator: str
    policy_loss: str
    value_loss: str
    loss_agg_mode: str
    temperature: float
    compute_entropy: bool
    num_micro_batches: int


# ------------------------------------------------------------------------------------------ values


def token_values(model, mb: dict, image_embeds, window: int = 0, group: int = 1) -> jax.Array:
    """The scalar head at every token: ``[B, T]`` float32, column t = the value of the state before token
    t (column 0 and columns off the window: 0). ``mb``: one micro-batch of `trainers.steps` (``input_ids``,
    ``attention_mask``, ``position_ids``, ``window_start`` with a window); ``image_embeds`` its images'
    embeddings or None. ``window`` > 0: the head reads only the hidden states of the window's columns."""
    T = mb["input_ids"].shape[1]
    if not window:
        h = _forward(model, mb, image_embeds, return_hidden=True)
        return jnp.pad(model.score_hidden(h[:, :-1]), ((0, 0), (1, 0)))
    h, cols, valid = _window_hidden(model, mb, image_embeds, window, group)
    return scatter_columns(model.score_hidden(h), cols, valid, T)


@functools.partial(nnx.jit, static_argnames=("window", "num_micro_batches", "group"))
def compute_values(critic, batch: dict, window: int = 0, num_micro_batches: int = 1, group: int = 1) -> jax.Array:
    """The critic's values ``[B, T]`` (`token_values`) for the rollout (``old_values``), no gradient."""
    _check_group(window, group)
    return _forward_micro(
        critic, batch, num_micro_batches, lambda mdl, mb, emb: token_values(mdl, mb, emb, window, group), group
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def ppo_targets(cfg: PPOConfig, scores, old_logp, ref_logp, old_values, mask) -> tuple[jax.Array, jax.Array, dict]:
    """Rollout-time PPO math: token rewards (clipped RM score at each row's last response token, minus
    ``kl_coef`` x the ``kl_estimator`` KL on every response token), then ``cfg.advantage_estimator``
    (GAE with gamma, lam; whitened if ``cfg.whiten``). scores ``[B]``; the rest ``[B, T]``.
    Returns (advantages, returns ``[B, T]``, metrics: `ppo.token_rewards`' plus ``reward_seq_mean``,
    ``advantages_mean``, ``returns_mean``)."""
    rewards, metrics = ppo.token_rewards(
        scores, old_logp, ref_logp, mask, kl_coef=cfg.kl_coef, score_clip=cfg.score_clip, kl_estimator=cfg.kl_estimator
    )
    adv, ret = ppo.compute_advantages(
        rewards, old_values, mask, cfg.advantage_estimator, gamma=cfg.gamma, lam=cfg.lam, whiten_advantages=cfg.whiten
    )
    mask = jnp.asarray(mask, jnp.float32)
    n = jnp.maximum(jnp.sum(mask), 1.0)
    metrics = dict(
        metrics,
        reward_seq_mean=jnp.mean(jnp.sum(rewards, axis=1)),
        advantages_mean=jnp.sum(adv * mask) / n,
        returns_mean=jnp.sum(ret * mask) / n,
    )
    return adv, ret, metrics


# ------------------------------------------------------------------------------------------- steps


def _denominator(cfg: PPOConfig, mask):
    return jnp.sum(mask) if cfg.loss_agg_mode == "token-mean" else jnp.float32(mask.shape[0])


@functools.partial(nnx.jit, static_argnames=("cfg", "window", "group"), donate_argnums=0)
def ppo_policy_step(state: TrainState, batch: dict, cfg: PPOConfig, window: int = 0, group: int = 1):
    """One PPO policy update: the clipped surrogate (``cfg.policy_loss``) with token-level ``advantages
    [B, T]``, no KL term (it is in the reward). Returns (state, metrics): loss, pg_loss, clip_frac,
    clip_frac_lower, ppo_kl, approx_kl, ratio_mean, entropy (with ``compute_entropy``), grad_norm, lr,
    response_length_mean."""
    _check_group(window, group)
    _require(
        batch,
        ("input_ids", "response_mask", "old_logp", "advantages") + (("window_start",) if window else ()),
        "ppo_policy_step",
    )
    mask = jnp.asarray(batch["response_mask"], jnp.float32)
    denom = _denominator(cfg, mask)

    def micro_loss(model, mb, emb):
        logp, ent = _aligned(model, mb, emb, window, cfg.temperature, cfg.compute_entropy, group)
        ent = None if ent is None else jax.lax.stop_gradient(ent)
        return ppo.ppo_policy_loss(
            logp,
            mb["old_logp"],
            mb["advantages"],
            mb["response_mask"],
            clip_eps=cfg.clip_eps,
            policy_loss=cfg.policy_loss,
            loss_agg_mode=cfg.loss_agg_mode,
            denominator=denom,
            entropy=ent,
        )

    _, grads, metrics = _accumulate_grads(
        state.model, batch, cfg.num_micro_batches, micro_loss, vision_grads=not state.frozen_vision, group=group
    )
    metrics["response_length_mean"] = jnp.mean(jnp.sum(mask, axis=1))
    return state, _apply(state, grads, metrics)


@functools.partial(nnx.jit, static_argnames=("cfg", "window", "group"), donate_argnums=0)
def value_step(critic_state: TrainState, batch: dict, cfg: PPOConfig, window: int = 0, group: int = 1):
    """One critic update: ``cfg.value_loss`` (clipped: ``0.5 * agg(max((v - R)^2, (v_clip - R)^2))``,
    ``v_clip`` = ``old_values`` +- ``value_clip``) of the critic's `token_values` against ``returns [B, T]``.
    Returns (critic_state, metrics): vf_loss, vf_clip_frac, vpred_mean, value_error, grad_norm, lr."""
    _check_group(window, group)
    _require(
        batch,
        ("input_ids", "response_mask", "old_values", "returns") + (("window_start",) if window else ()),
        "value_step",
    )
    if cfg.value_loss not in ppo.VALUE_LOSSES:
        raise ValueError(f"unknown value loss {cfg.value_loss!r}; registered: {sorted(ppo.VALUE_LOSSES)}")
    loss_fn = ppo.VALUE_LOSSES[cfg.value_loss]
    denom = _denominator(cfg, jnp.asarray(batch["response_mask"], jnp.float32))

    def micro_loss(model, mb, emb):
        v = token_values(model, mb, emb, window, group)
        return loss_fn(
            v,
            mb["old_values"],
            mb["returns"],
            mb["response_mask"],
            value_clip=cfg.value_clip,
            loss_agg_mode=cfg.loss_agg_mode,
            denominator=denom,
        )

    _, grads, metrics = _accumulate_grads(
        critic_state.model,
        batch,
        cfg.num_micro_batches,
        micro_loss,
        vision_grads=not critic_state.frozen_vision,
        group=group,
    )
    return critic_state, _apply(critic_state, grads, metrics)
