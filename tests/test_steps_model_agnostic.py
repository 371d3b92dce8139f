"""The train steps depend only on the model contract of docs/internal_api.md, not on Qwen-VL:
a tiny text LM with 1-D positions ([B, T], learned position embeddings, no images) trains through
`grpo_step` (2 micro-batches, logits on the response window) and `sft_step`, and the update
equals one written here with nnx.value_and_grad and the GRPO loss in plain jnp."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grlhfv_jax.rl import logprobs
from grlhfv_jax.trainers import steps


class TextLM(nnx.Module):
    """One causal self-attention block over token + learned position embeddings (1-D positions)."""

    shared_prompt = False  # declared capabilities (`models.contract.VLModel`)
    group_images = False

    def __init__(self, vocab: int = 24, hidden: int = 16, max_pos: int = 32, *, rngs: nnx.Rngs):
        self.tok = nnx.Embed(vocab, hidden, rngs=rngs)
        self.pos = nnx.Embed(max_pos, hidden, rngs=rngs)
        self.qkv = nnx.Linear(hidden, 3 * hidden, rngs=rngs)
        self.head = nnx.Linear(hidden, vocab, use_bias=False, rngs=rngs)

    def rope_index(self, input_ids, attention_mask=None, image_grid_thw=None):
        """1-D positions [B, T]: the index among the row's real tokens (left padding shifts them)."""
        am = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        return jnp.maximum(jnp.cumsum(am, axis=1) - 1, 0).astype(jnp.int32), jnp.zeros(input_ids.shape[0], jnp.int32)

    def __call__(self, input_ids, attention_mask=None, *, position_ids=None, image_embeds=None, return_hidden=False):
        if position_ids is None or position_ids.shape != input_ids.shape:
            raise ValueError(
                f"TextLM needs 1-D position_ids [B, T], got {None if position_ids is None else position_ids.shape}"
            )
        x = self.tok(input_ids) + self.pos(position_ids)
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        T = input_ids.shape[1]
        mask = jnp.tril(jnp.ones((T, T), bool))[None] & attention_mask.astype(bool)[:, None, :]
        s = jnp.where(mask, jnp.einsum("btd,bsd->bts", q, k) / 4.0, -1e30)
        h = x + jnp.einsum("bts,bsd->btd", jax.nn.softmax(s, axis=-1), v)
        return h if return_hidden else self.logits(h)

    def logits(self, h):
        return self.head(h).astype(jnp.float32)


def _batch():
    """6 rows, left-padded prompts (lengths 2..4) + right-padded responses (1..3 tokens)."""
    rng = np.random.default_rng(0)
    Tp, R = 4, 3
    ids = np.zeros((6, Tp + R), np.int32)
    am = np.zeros_like(ids)
    resp = np.zeros((6, Tp + R), np.float32)
    for b in range(6):
        p, r = 2 + b % 3, 1 + b % 3
        ids[b, Tp - p : Tp + r] = rng.integers(1, 24, p + r)
        am[b, Tp - p : Tp + r] = 1
        resp[b, Tp : Tp + r] = 1
    old = (0.2 * rng.normal(size=ids.shape) - 3.0).astype(np.float32) * resp
    return dict(
        input_ids=ids,
        attention_mask=am,
        response_mask=resp,
        old_logp=old,
        ref_logp=(old + 0.1 * rng.normal(size=ids.shape).astype(np.float32)) * resp,
        advantages=rng.normal(size=(6,)).astype(np.float32),
        window_start=np.full(6, Tp, np.int32),
    ), R


def _params(model):
    return {str(k): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_grpo_step_trains_a_model_with_1d_positions():
    batch, R = _batch()
    jb = {k: jnp.asarray(v) for k, v in batch.items()}

    ref = TextLM(rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(ref, optax.sgd(0.5), wrt=nnx.Param)

    def loss_fn(model):  # the GRPO loss (clip 0.2, k3 KL x 0.02, token mean), written out here
        pos = jnp.maximum(jnp.cumsum(jb["attention_mask"], axis=1) - 1, 0)
        logits = model(jb["input_ids"], jb["attention_mask"], position_ids=pos)
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), jb["input_ids"][:, 1:, None], -1)[..., 0]
        mask, a = jb["response_mask"][:, 1:], jb["advantages"][:, None]
        ratio = jnp.exp(lp - jb["old_logp"][:, 1:])
        surr = jnp.maximum(-a * ratio, -a * jnp.clip(ratio, 0.8, 1.2))
        d = jb["ref_logp"][:, 1:] - lp
        return jnp.sum((surr + 0.02 * (jnp.exp(d) - d - 1)) * mask) / jnp.sum(mask)

    want_loss, grads = nnx.value_and_grad(loss_fn)(ref)
    opt.update(ref, grads)

    model = TextLM(rngs=nnx.Rngs(0))
    state = steps.TrainState(model, optax.sgd(0.5))
    _, m = steps.grpo_step(state, jb, steps.GRPOConfig(num_micro_batches=2), window=R)
    assert float(m["loss"]) == pytest.approx(float(want_loss), rel=1e-5)
    got, want = _params(model), _params(ref)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    losses = [float(m["loss"])]
    for _ in range(5):
        _, m = steps.grpo_step(state, jb, steps.GRPOConfig(num_micro_batches=2), window=R)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 1e-3, losses


def test_sft_step_trains_a_model_with_1d_positions():
    batch, _ = _batch()
    b = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], loss_mask=batch["response_mask"])
    b["window_start"], window = logprobs.window_start_and_length(b["loss_mask"], multiple=2)
    model = TextLM(rngs=nnx.Rngs(1))
    pos = jnp.maximum(jnp.cumsum(b["attention_mask"], axis=1) - 1, 0)
    logits = model(jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]), position_ids=pos)
    lp = np.asarray(
        jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), jnp.asarray(b["input_ids"])[:, 1:, None], -1)[
            ..., 0
        ]
    )
    mask = b["loss_mask"][:, 1:]
    want = -(lp * mask).sum() / mask.sum()
    state = steps.TrainState(model, optax.adam(1e-2))
    losses = [
        float(steps.sft_step(state, b, steps.SFTConfig(num_micro_batches=3), window=window)[1]["loss"])
        for _ in range(4)
    ]
    assert losses[0] == pytest.approx(want, rel=1e-5)
    assert losses[-1] < losses[0] - 0.05, losses
