"""One PPO iteration with a critic on sampled responses (`ppo_update`), and the state it trains
(`ActorCritic`: the policy's and the critic's `TrainState`s, checkpointed together).

The rows are GRPO's (`trainers.grpo.sampled_batch`): left-padded prompt + response; old log-probs
are the sampler's, reference log-probs one teacher-forced pass of the frozen reference, old values
one pass of the critic; `ppo_steps.ppo_targets` turns the RM scores into token rewards (the
clipped score on the last response token, minus kl_coef x KL on every token) and GAE advantages
and returns; each mini-batch then updates the policy (`ppo_policy_step`) and the critic
(`value_step`).
"""

from __future__ import annotations

import time

import numpy as np
from flax import nnx

from grlhfv_jax import sharding
from grlhfv_jax.rl import grpo
from grlhfv_jax.trainers import ppo_steps
from grlhfv_jax.trainers.grpo import (
    mean_metrics,
    mini_batches_of,
    reference_logprobs,
    sampled_batch,
)
from grlhfv_jax.trainers.steps import TrainState


class _Pair(nnx.Module):
    def __init__(self, policy, critic):
        self.policy, self.critic = policy, critic


class ActorCritic(nnx.Module):
    """The PPO learner's state: `actor` (policy) and `critic` TrainStates. `model` and `optimizer`
    view both (shared, not copied), so `loop.train_loop` checkpoints and restores the two
    together; `policy` is the model a stage exports."""

    def __init__(self, actor: TrainState, critic: TrainState):
        self.actor, self.critic = actor, critic
        self.model = _Pair(actor.model, critic.model)
        self.optimizer = _Pair(actor.optimizer, critic.optimizer)

    @property
    def policy(self):
        return self.actor.model


def ppo_config(sec) -> ppo_steps.PPOConfig:
    """The PPO settings of a `policy_ppo_rm` section (`config.sections`)."""
    return ppo_steps.PPOConfig(
        gamma=float(sec.gamma),
        lam=float(sec.lam),
        whiten=bool(sec.whiten),
        clip_eps=float(sec.clip_eps),
        value_clip=float(sec.value_clip),
        score_clip=float(sec.score_clip),
        kl_coef=float(sec.kl_coef),
        kl_estimator=str(sec.kl_estimator),
        advantage_estimator="gae",
        policy_loss=str(sec.policy_loss),
        value_loss="clipped",
        loss_agg_mode=str(sec.loss_agg_mode),
        temperature=1.0,
        compute_entropy=True,
        num_micro_batches=int(sec.num_micro_batches),
    )


def ppo_update(
    state: ActorCritic,
    ref_model,
    prompts: dict,
    gen,
    scores: np.ndarray,
    *,
    pad_id: int,
    cfg: ppo_steps.PPOConfig,
    mini_batches: int = 1,
    ref_num_micro_batches: int = 1,
) -> dict:
    """One PPO iteration. prompts: the left-padded prompt batch [P, Tp] sampled from (`valid` [P]);
    gen: P*G sampled rows; scores [P, G]: the RM's reward of each response (a sequence-level score,
    placed on its last token). Returns the mean of the policy and value steps' metrics (value ones
    prefixed `critic/`), the targets' metrics (`ppo/`), rollout metrics over every host's groups,
    and the seconds of the reference + value pass and of the updates."""
    P, G = scores.shape
    batch, valid, window = sampled_batch(state.actor.model, prompts, gen, pad_id=pad_id)
    t0 = time.perf_counter()
    batch["ref_logp"] = reference_logprobs(
        ref_model, batch, window=window, group=G, num_micro_batches=ref_num_micro_batches
    )
    critic = state.critic.model
    placed = {k: v for k, v in batch.items() if k not in ("old_logp", "ref_logp")}
    placed = next(
        mini_batches_of(critic, placed, prompts=P, group=G, mini_batches=1, num_micro_batches=ref_num_micro_batches)
    )
    batch["old_values"] = sharding.host_rows(
        ppo_steps.compute_values(critic, placed, window=window, num_micro_batches=ref_num_micro_batches, group=G)
    )
    adv, ret, target_metrics = ppo_steps.ppo_targets(
        cfg,
        np.asarray(scores, np.float32).reshape(-1),
        batch["old_logp"],
        batch["ref_logp"],
        batch["old_values"],
        batch["response_mask"].astype(np.float32),
    )
    batch["advantages"], batch["returns"] = np.asarray(adv), np.asarray(ret)
    t1 = time.perf_counter()
    policy_metrics, value_metrics = [], []
    for mb in mini_batches_of(
        state.actor.model, batch, prompts=P, group=G, mini_batches=mini_batches, num_micro_batches=cfg.num_micro_batches
    ):
        _, met = ppo_steps.ppo_policy_step(state.actor, mb, cfg, window=window, group=G)
        policy_metrics.append({k: float(v) for k, v in met.items()})
        _, met = ppo_steps.value_step(state.critic, mb, cfg, window=window, group=G)
        value_metrics.append({k: float(v) for k, v in met.items()})
    out = mean_metrics(policy_metrics)
    out.update({f"critic/{k}": v for k, v in mean_metrics(value_metrics).items()})
    out.update({f"ppo/{k}": float(v) for k, v in target_metrics.items()})
    out["time/ref_values_s"], out["time/update_s"] = t1 - t0, time.perf_counter() - t1
    g = sharding.gather_rows
    keep = g(valid).astype(bool)
    seq_adv = np.asarray(adv).sum(axis=1) / np.maximum(batch["response_mask"].sum(axis=1), 1)
    out.update(
        grpo.rollout_metrics(
            g(np.asarray(scores))[keep],
            g(seq_adv.reshape(P, G))[keep],
            g(np.asarray(gen.lengths).reshape(P, G))[keep],
            ~g(np.asarray(gen.finished).reshape(P, G))[keep],
        )
    )
    return out
