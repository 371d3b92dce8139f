"""The RL learner: one step is rollout -> reward function -> advantages -> reference pass ->
mini-batch updates -> metrics, over typed values (`Rollout`, `Rewards`): GRPO (`grpo_step_fn`:
group-relative advantages) and PPO with a critic (`ppo_step_fn`: GAE on token rewards).

A stage builds its roles (the trainee and its reference, the data, a reward function) and hands
them to `grpo_step_fn`; the step function it returns is what `loop.train_loop` runs. A reward
function sees the step's `Rollout` and returns `Rewards`: values [P, G] and, where the prompts'
samples are compared across prompt rows, the advantage groups (e.g. the GRM's two presentation
orders of a pair, `grm_rl`); the advantage estimator (`config.<section>.advantage_estimator`,
`rl.grpo.ADVANTAGE_ESTIMATORS`) turns them into advantages.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from grlhfv_jax.rl import grpo
from grlhfv_jax.rollout import GenerationOutput, SamplingParams
from grlhfv_jax.rollout.group_sampling import engine_rollout, sample_groups
from grlhfv_jax.trainers import grpo as grpo_update_lib
from grlhfv_jax.trainers import loop, ppo_update, steps


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One step's samples: `items` [P] (what the stage made each prompt from: a record, a labelled
    pair), the left-padded prompt batch [P, Tp] (model inputs, `valid` [P]), the engine's output
    for P * G rows (group p = rows p*G .. p*G+G-1) and their decoded texts."""

    items: Sequence[Any]
    prompts: dict
    gen: GenerationOutput
    texts: list[str]
    group: int

    @property
    def complete(self) -> np.ndarray:
        """[P, G] bool: the response ended with EOS (not cut by the length limit or a banned token)."""
        return np.asarray(self.gen.finished).reshape(len(self.items), self.group)


@dataclasses.dataclass(frozen=True)
class Rewards:
    """A reward function's result: `values` [P, G] (float); `groups` [P] (int) the advantage group
    of each prompt row (None: one group per prompt); `metrics` logged with the step's."""

    values: np.ndarray
    groups: np.ndarray | None = None
    metrics: dict = dataclasses.field(default_factory=dict)


RewardFn = Callable[[Rollout, int], Rewards]  # (rollout, step) -> rewards
Observer = Callable[[Rollout, Rewards], dict]  # extra step metrics (e.g. an oracle's view)


def grpo_config(sec) -> steps.GRPOConfig:
    """The GRPO loss settings of a validated training section (`config.sections.GRPO` keys)."""
    return steps.GRPOConfig.from_section(sec)


def advantages(rewards: Rewards, valid: np.ndarray, estimator: str) -> np.ndarray:
    """Advantages [P, G] of `rewards` by `estimator` over its groups (one per prompt row unless
    `rewards.groups`), zero on fill rows (`valid` [P] = 0)."""
    values = jnp.asarray(rewards.values, jnp.float32)
    P = values.shape[0]
    groups = np.arange(P) if rewards.groups is None else np.asarray(rewards.groups)
    adv = np.asarray(grpo.pooled_advantages(values, groups, estimator))
    return adv * np.asarray(valid)[:, None]


def sample(
    model, codec, items: Sequence, examples: list[dict], sec, seed: int, rollout_for: Callable | None = None
) -> Rollout:
    """`sec`'s samples of `model` for one step: `sec.group_size` (stage 1) or `sec.n` responses per
    prompt example at `sec.temperature`, at most `sec.max_new_tokens`, prompts padded to
    `sec.max_len`, in `sec.rollout_num_micro_batches` sampler calls; rng seed `seed`. `rollout_for(model)`:
    the `rollout.Rollout` to sample from (default: the KV-cache engine)."""
    G = int(sec.group_size if "group_size" in sec else sec.n)
    params = SamplingParams(
        max_new_tokens=int(sec.max_new_tokens), temperature=float(sec.temperature), num_samples=G, seed=int(seed)
    )
    sampler = rollout_for(model) if rollout_for else engine_rollout(model, codec)
    prompts, gen, texts = sample_groups(
        sampler, codec, examples, max_len=int(sec.max_len), params=params, num_calls=int(sec.rollout_num_micro_batches)
    )
    return Rollout(list(items), prompts, gen, texts, G)


def _step_fn(*, model_of, update, codec, prompts_for_step, reward_fn, sec, seed_for_step, observers, rollout_for):
    """The RL step every learner shares: prompts -> samples of `model_of(state)` (`sample`) ->
    `reward_fn` -> the observers -> `update(state, rollout, rewards)` (its metrics) -> metrics with
    the reward function's, the observers' and the seconds of rollout, reward and the whole step."""

    def step_fn(state, step: int):
        t0 = time.perf_counter()
        items, examples = prompts_for_step(step)
        rollout = sample(model_of(state), codec, items, examples, sec, seed_for_step(step), rollout_for)
        t1 = time.perf_counter()
        rewards = reward_fn(rollout, step)
        t2 = time.perf_counter()
        observed = [obs(rollout, rewards) for obs in observers]
        metrics = update(state, rollout, rewards)
        for m in (rewards.metrics, *observed):
            metrics.update(m)
        metrics.update({"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/step_s": time.perf_counter() - t0})
        return state, metrics

    return step_fn


def grpo_step_fn(
    *,
    ref,
    codec,
    prompts_for_step: Callable[[int], tuple[Sequence, list[dict]]],
    reward_fn: RewardFn,
    sec,
    seed_for_step: Callable[[int], int],
    observers: Sequence[Observer] = (),
    rollout_for: Callable | None = None,
):
    """The step function of a GRPO stage (for `loop.train_loop`): `(state, step) -> (state, metrics)`.

    prompts_for_step(step) -> (items [P], prompt examples [P]); the trainee (`state.model`) samples
    them (`sample`, rng seed `seed_for_step(step)`); `reward_fn` scores them; advantages by
    `sec.advantage_estimator` over the reward's groups; `grpo_update` runs the reference pass and
    `sec.mini_batches` updates against `ref`. Metrics: the update's and the rollout's, the reward
    function's, each observer's, and the seconds of rollout, reward and the whole step."""
    cfg = grpo_config(sec)

    def update(state, rollout: Rollout, rewards: Rewards) -> dict:
        valid = np.asarray(rollout.prompts.get("valid", np.ones(len(rollout.items), np.int32)))
        adv = advantages(rewards, valid, cfg.advantage_estimator)
        metrics = grpo_update_lib.grpo_update(
            state,
            ref,
            rollout.prompts,
            rollout.gen,
            np.asarray(rewards.values),
            pad_id=codec.pad_id,
            cfg=cfg,
            mini_batches=int(sec.mini_batches),
            advantages=adv,
        )
        if rewards.groups is not None:  # groups pooled across prompt rows that carry no signal
            ids = np.asarray(rewards.groups)
            metrics["reward/frac_pooled_groups_zero_std"] = float(
                np.mean([np.all(adv[ids == g] == 0) for g in np.unique(ids)])
            )
        return metrics

    return _step_fn(
        model_of=lambda state: state.model,
        update=update,
        codec=codec,
        prompts_for_step=prompts_for_step,
        reward_fn=reward_fn,
        sec=sec,
        seed_for_step=seed_for_step,
        observers=observers,
        rollout_for=rollout_for,
    )


def ppo_step_fn(
    *,
    ref,
    codec,
    prompts_for_step: Callable[[int], tuple[Sequence, list[dict]]],
    reward_fn: RewardFn,
    sec,
    seed_for_step: Callable[[int], int],
    observers: Sequence[Observer] = (),
    rollout_for: Callable | None = None,
):
    """The step function of a PPO stage: `(state: ppo_update.ActorCritic, step) -> (state, metrics)`.
    As `grpo_step_fn` up to the reward; then `ppo_update`: the reward values [P, n] are each
    response's sequence score (placed on its last token, KL in the reward), the critic's values and
    GAE give token-level advantages, `sec.mini_batches` updates of the policy and the critic."""
    cfg = ppo_update.ppo_config(sec)

    def update(state, rollout: Rollout, rewards: Rewards) -> dict:
        return ppo_update.ppo_update(
            state,
            ref,
            rollout.prompts,
            rollout.gen,
            np.asarray(rewards.values),
            pad_id=codec.pad_id,
            cfg=cfg,
            mini_batches=int(sec.mini_batches),
            ref_num_micro_batches=int(sec.ref_num_micro_batches),
        )

    return _step_fn(
        model_of=lambda state: state.policy,
        update=update,
        codec=codec,
        prompts_for_step=prompts_for_step,
        reward_fn=reward_fn,
        sec=sec,
        seed_for_step=seed_for_step,
        observers=observers,
        rollout_for=rollout_for,
    )


def train(name: str, state, step_fn, sec, writer, ckpt_dir: str, on_log=None) -> None:
    """`sec.steps` RL steps of `step_fn` on `state` (`loop.train_loop`: resumable from `ckpt_dir`,
    logs every `sec.log_every` steps under stage `name`, checkpoints every `sec.ckpt_every`)."""
    loop.train_loop(
        name,
        state,
        steps=int(sec.steps),
        make_batch=lambda s: s,
        step_fn=step_fn,
        writer=writer,
        ckpt_dir=ckpt_dir,
        log_every=int(sec.log_every),
        ckpt_every=int(sec.ckpt_every),
        on_log=on_log,
    )
