"""PPO steps (trainers/ppo_steps.py) on a tiny random Qwen2-VL with images: the critic's values against its
own direct forward (the scalar head read in numpy), the value step's loss against the numpy value loss of
those values, a few value steps lower it, the policy step's loss against the numpy clipped surrogate of
teacher-forced log-probs, and the rollout targets against the numpy references of test_rl_ppo.
Compiled functions are few and module-scoped."""

import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).parent))
import test_rl_ppo as ref  # noqa: E402  (the numpy references)
import tiny_models as tm  # noqa: E402
from grlhfv_jax import models  # noqa: E402
from grlhfv_jax.rl import logprobs  # noqa: E402
from grlhfv_jax.trainers import ppo_steps, steps  # noqa: E402

CFG = ppo_steps.PPOConfig(
    gamma=0.9,
    lam=0.8,
    whiten=False,
    clip_eps=0.2,
    value_clip=0.5,
    score_clip=50.0,
    kl_coef=0.02,
    kl_estimator="k1",
    advantage_estimator="gae",
    policy_loss="ppo_clip",
    value_loss="clipped",
    loss_agg_mode="token-mean",
    temperature=1.0,
    compute_entropy=True,
    num_micro_batches=2,
)


@pytest.fixture(scope="module")
def hf_config():
    cfg = tm.tiny_hf_config(
        "qwen2_vl", text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    ).to_dict()
    cfg["vision_config"]["depth"] = 1
    return cfg


@pytest.fixture(scope="module")
def data():
    """4 rows [prompt with an image | response], right-padded, prompts and responses of different lengths;
    ``window_start`` / ``window`` cover every response."""
    rng = np.random.default_rng(0)
    grids = [(1, 2, 2), (1, 2, 4), (1, 2, 2), (1, 4, 2)]
    rows, resp_len = [], []
    for k in range(4):
        n = 2 + k
        rows.append([list(rng.integers(3, 99, 1 + k % 2)), grids[k], list(rng.integers(3, 99, n))])
        resp_len.append(n)
    b = tm.make_batch(rows, pad_side="right")
    B, T = b["input_ids"].shape
    resp = np.zeros((B, T), np.float32)
    for i, n in enumerate(resp_len):
        end = int(b["attention_mask"][i].sum())
        resp[i, end - n : end] = 1.0
    start, window = logprobs.window_start_and_length(resp, multiple=4)
    batch = dict(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"],
        pixel_values=b["pixel_values"],
        image_grid_thw=b["image_grid_thw"],
        response_mask=resp,
        window_start=start,
    )
    return batch, window


@pytest.fixture(scope="module")
def critic(hf_config):
    model = models.from_config(hf_config, rngs=nnx.Rngs(1), scalar_head=True)
    tm.spread(model, np.random.default_rng(3))  # O(0.3) weights: values of O(1) that differ by token
    return model


def _hidden(model, batch):
    return np.asarray(
        model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["pixel_values"],
            batch["image_grid_thw"],
            return_hidden=True,
        )
    )


@pytest.fixture(scope="module")
def critic_values(critic, data):
    """Values [B, T] read here from the direct forward: the head's kernel on the hidden state before t."""
    batch, _ = data
    h = _hidden(critic, batch)
    w = np.asarray(critic.score_head.kernel[...])[:, 0]
    v = np.zeros(batch["input_ids"].shape, np.float64)
    v[:, 1:] = h[:, :-1] @ w
    return v


def test_score_hidden_is_score_at_the_last_token(critic, data):
    batch, _ = data
    h = _hidden(critic, batch)
    last = batch["attention_mask"].sum(1) - 1
    got = np.asarray(critic.score_hidden(jnp.asarray(h)))[np.arange(4), last]
    want = np.asarray(
        critic.score(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    policy = models.from_config(critic.config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="scalar head"):
        policy.score_hidden(jnp.asarray(h))


def test_compute_values_against_forward(critic, data, critic_values):
    batch, window = data
    mask = batch["response_mask"]
    got = np.asarray(ppo_steps.compute_values(critic, batch, window=window, num_micro_batches=2))
    np.testing.assert_allclose(got * mask, critic_values * mask, rtol=1e-4, atol=1e-5)
    full = np.asarray(ppo_steps.compute_values(critic, batch))  # every column, no window
    np.testing.assert_allclose(full[:, 1:], critic_values[:, 1:], rtol=1e-4, atol=1e-5)
    assert np.std(critic_values[mask > 0]) > 0.1  # a real test: the values differ by token


def test_ppo_targets_against_numpy(data):
    batch, _ = data
    mask = batch["response_mask"]
    rng = np.random.default_rng(4)
    old = (-2.0 + rng.normal(size=mask.shape)).astype(np.float32) * mask
    ref_lp = (-2.0 + rng.normal(size=mask.shape)).astype(np.float32) * mask
    values = rng.normal(size=mask.shape).astype(np.float32)
    scores = np.array([70.0, -1.0, 2.5, -55.0], np.float32)
    adv, ret, met = ppo_steps.ppo_targets(CFG, scores, old, ref_lp, values, mask)
    rewards = ref.np_token_rewards(scores, old, ref_lp, mask, CFG.kl_coef, CFG.score_clip)
    want_adv, want_ret = ref.np_gae(rewards, values, mask, CFG.gamma, CFG.lam)
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(met["reward_seq_mean"]), rewards.sum(1).mean(), rtol=1e-5)
    white, _, _ = ppo_steps.ppo_targets(dataclasses.replace(CFG, whiten=True), scores, old, ref_lp, values, mask)
    np.testing.assert_allclose(np.asarray(white), ref.np_whiten(want_adv, mask), rtol=1e-4, atol=1e-5)


def test_value_step_loss_and_descent(hf_config, data, critic_values):
    """old_values = the critic's values + noise (so the clip is active on some tokens); returns from GAE
    on random rewards. The first step's loss is the numpy loss of the critic's own values; it goes down."""
    batch, window = data
    mask = batch["response_mask"]
    rng = np.random.default_rng(5)
    old_values = ((critic_values + rng.normal(size=mask.shape)) * mask).astype(np.float32)
    rewards = rng.normal(size=mask.shape) * mask
    _, returns = ref.np_gae(rewards, old_values, mask, CFG.gamma, CFG.lam)
    vbatch = dict(batch, old_values=old_values, returns=returns.astype(np.float32))
    want = ref.np_value_loss(critic_values, old_values, returns, mask, CFG.value_clip)

    critic = models.from_config(hf_config, rngs=nnx.Rngs(1), scalar_head=True)
    tm.spread(critic, np.random.default_rng(3))  # the `critic` fixture's weights
    state = steps.TrainState(critic, optax.adam(3e-3))
    losses = []
    for _ in range(4):
        state, met = ppo_steps.value_step(state, vbatch, CFG, window=window)
        losses.append(float(met["vf_loss"]))
    np.testing.assert_allclose(losses[0], want, rtol=1e-4)
    assert 0.0 < float(met["vf_clip_frac"]) < 1.0
    assert losses[-1] < 0.9 * losses[0], losses


def test_policy_step_loss_against_numpy(hf_config, data):
    """Old log-probs = teacher-forced log-probs + noise (clip active on some tokens), GAE advantages per
    token; the step's loss is the numpy clipped surrogate of the teacher-forced log-probs."""
    batch, window = data
    mask = batch["response_mask"]
    policy = models.from_config(hf_config, rngs=nnx.Rngs(0))
    logp = np.asarray(steps.compute_logprobs(policy, batch, window=window))
    rng = np.random.default_rng(6)
    old = ((logp + 0.3 * rng.normal(size=mask.shape)) * mask).astype(np.float32)
    adv, _ = ref.np_gae(rng.normal(size=mask.shape) * mask, rng.normal(size=mask.shape), mask, CFG.gamma, CFG.lam)
    pbatch = dict(batch, old_logp=old, advantages=adv.astype(np.float32))
    want = ref.np_policy_loss(logp, old, adv, mask, CFG.clip_eps)
    state = steps.TrainState(policy, optax.sgd(0.1))
    state, met = ppo_steps.ppo_policy_step(state, pbatch, CFG, window=window)
    np.testing.assert_allclose(float(met["loss"]), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(met["pg_loss"]), want, rtol=1e-4, atol=1e-6)
    assert 0.0 < float(met["clip_frac"]) < 1.0 and "kl" not in met and float(met["entropy"]) > 0.0
    assert float(met["grad_norm"]) > 0.0


def test_compute_values_shared_prompt_groups(critic):
    """The trainers' layout [left-padded prompt | right-padded response], 2 prompts (each with an image) x 2
    responses: with ``group=2`` (each prompt and its image run once per group) the values equal those
    read from the direct forward of every row."""
    rng = np.random.default_rng(7)
    prompts = tm.make_batch([[list(rng.integers(3, 99, 3)), (1, 2, 2), [5]], [[7], (1, 2, 4), [8, 9]]], pad_side="left")
    rep = np.array([0, 0, 1, 1])
    P, R = prompts["input_ids"].shape[1], 4
    lengths = np.array([4, 2, 1, 3])
    resp_mask = (np.arange(R)[None, :] < lengths[:, None]).astype(np.int32)
    resp = np.where(resp_mask == 1, rng.integers(3, 99, (4, R)), tm.PAD).astype(np.int32)
    n0 = int(np.prod((1, 2, 2)))  # patches of prompt 0's image
    pv0, pv1 = prompts["pixel_values"][:n0], prompts["pixel_values"][n0:]
    batch = dict(
        input_ids=np.concatenate([prompts["input_ids"][rep], resp], axis=1),
        attention_mask=np.concatenate([prompts["attention_mask"][rep], resp_mask], axis=1),
        response_mask=np.concatenate([np.zeros((4, P), np.float32), resp_mask], axis=1).astype(np.float32),
        pixel_values=np.concatenate([pv0, pv0, pv1, pv1]),
        image_grid_thw=prompts["image_grid_thw"][rep],
        window_start=np.full(4, P, np.int32),
    )
    got = np.asarray(ppo_steps.compute_values(critic, batch, window=R, group=2))
    h = _hidden(critic, batch)
    w = np.asarray(critic.score_head.kernel[...])[:, 0]
    want = np.zeros_like(got)
    want[:, P:] = h[:, P - 1 : -1] @ w
    mask = batch["response_mask"]
    np.testing.assert_allclose(got * mask, want * mask, rtol=1e-4, atol=1e-5)
    assert np.all(got[:, :P] == 0)


def test_actor_critic_checkpoint_resumes_the_critic_and_its_optimizer(hf_config, data, critic_values, tmp_path):
    """`loop.train_loop` checkpoints a PPO state (`trainers.ppo_update.ActorCritic`) whole: a run
    that crashes after 2 value steps and is rerun ends with the critic (weights, and through Adam's
    moments its later steps) of an uninterrupted 4-step run. Without the critic in the checkpoint
    the rerun would restart it from its initial weights; without its optimizer state, Adam's first
    step after the resume would differ."""
    from grlhfv_jax.metrics import MetricsWriter
    from grlhfv_jax.trainers import loop
    from grlhfv_jax.trainers.ppo_update import ActorCritic

    batch, window = data
    mask = batch["response_mask"]
    old_values = (critic_values * mask).astype(np.float32)
    vbatch = dict(batch, old_values=old_values, returns=(old_values + mask).astype(np.float32))

    def fresh():
        critic = models.from_config(hf_config, rngs=nnx.Rngs(1), scalar_head=True)
        tm.spread(critic, np.random.default_rng(3))
        policy = models.from_config(hf_config, rngs=nnx.Rngs(2))
        return ActorCritic(steps.TrainState(policy, optax.sgd(0.0)), steps.TrainState(critic, optax.adam(3e-3)))

    def step_fn(state, step):
        if step == crash_at[0]:
            raise RuntimeError("preempted")
        _, met = ppo_steps.value_step(state.critic, vbatch, CFG, window=window)
        return state, {"loss": met["vf_loss"]}

    def critic_params(state):
        return np.concatenate(
            [np.ravel(np.asarray(v[...])) for _, v in nnx.to_flat_state(nnx.state(state.critic.model, nnx.Param))]
        )

    kw = dict(steps=4, make_batch=lambda s: s, step_fn=step_fn, log_every=1, ckpt_every=1)
    crash_at = [None]
    whole = fresh()
    loop.train_loop(
        "ppo",
        whole,
        writer=MetricsWriter(str(tmp_path / "a"), tensorboard=False),
        ckpt_dir=str(tmp_path / "a" / "ck"),
        **kw,
    )
    crash_at[0] = 2
    with pytest.raises(RuntimeError, match="preempted"):
        loop.train_loop(
            "ppo",
            fresh(),
            writer=MetricsWriter(str(tmp_path / "b"), tensorboard=False),
            ckpt_dir=str(tmp_path / "b" / "ck"),
            **kw,
        )
    crash_at[0] = None
    resumed = fresh()
    loop.train_loop(
        "ppo",
        resumed,
        writer=MetricsWriter(str(tmp_path / "b"), tensorboard=False),
        ckpt_dir=str(tmp_path / "b" / "ck"),
        **kw,
    )
    assert np.abs(critic_params(whole) - critic_params(fresh())).max() > 1e-4  # the critic did move
    np.testing.assert_array_equal(critic_params(resumed), critic_params(whole))
