"""Bradley-Terry RM, DPO/IPO and SFT losses against numpy written here."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from grlhfv_jax.rl import bt_rm, dpo, sft


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_bt_loss_reference():
    rc = np.array([1.0, -0.5, 2.0, 0.3])
    rr = np.array([0.0, 0.5, -1.0, 0.3])
    loss, m = bt_rm.bt_loss(jnp.asarray(rc), jnp.asarray(rr))
    nll = -np.mean([_logsig(a - b) for a, b in zip(rc, rr)])
    reg = np.mean(np.concatenate([rc, rr]) ** 2)
    assert float(loss) == pytest.approx(nll + 0.001 * reg, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(0.5)  # ties are not correct
    assert float(m["margin"]) == pytest.approx(np.mean(rc - rr), rel=1e-6)
    # hand case: equal rewards 0 -> log 2
    loss, _ = bt_rm.bt_loss(jnp.zeros(3), jnp.zeros(3))
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    # padding weights
    loss_w, m_w = bt_rm.bt_loss(jnp.asarray(rc), jnp.asarray(rr), weights=jnp.array([1.0, 1.0, 0.0, 0.0]))
    nll2 = -np.mean([_logsig(a - b) for a, b in zip(rc[:2], rr[:2])])
    reg2 = np.mean(np.concatenate([rc[:2], rr[:2]]) ** 2)
    assert float(loss_w) == pytest.approx(nll2 + 0.001 * reg2, rel=1e-6)
    assert float(bt_rm.bt_loss(jnp.ones(2), jnp.zeros(2), weights=jnp.zeros(2))[0]) == 0.0


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_reference(loss_type):
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(size=5) * 3 for _ in range(4))
    beta = 0.1
    loss, m = dpo.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), beta=beta, loss_type=loss_type)
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        want = np.mean([-_logsig(beta * x) for x in h])
    else:
        want = np.mean((h - 1 / (2 * beta)) ** 2)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    cr, rj = beta * (pc - rc), beta * (pr - rr)
    assert float(m["accuracy"]) == pytest.approx(np.mean(cr > rj))
    assert float(m["margin"]) == pytest.approx(np.mean(cr - rj), rel=1e-5)
    assert float(m["rewards_chosen"]) == pytest.approx(np.mean(cr), rel=1e-5)


def test_dpo_hand_case_and_smoothing():
    z = jnp.zeros(1)
    loss, _ = dpo.dpo_loss(z, z, z, z)  # policy == reference -> log 2
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    loss, _ = dpo.dpo_loss(jnp.array([10.0]), z, z, z, beta=0.5, label_smoothing=0.2)
    want = -0.8 * _logsig(5.0) - 0.2 * _logsig(-5.0)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        dpo.dpo_loss(z, z, z, z, loss_type="kto")


def test_sft_loss_reference():
    rng = np.random.default_rng(1)
    B, T, V = 2, 6, 9
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    tokens = rng.integers(0, V, (B, T))
    mask = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], np.float32)  # 2nd row empty
    loss, m = sft.sft_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))
    nll, n, hits = 0.0, 0, 0
    for b in range(B):
        for t in range(1, T):  # target t predicted from logits at t-1
            if mask[b, t]:
                z = logits[b, t - 1].astype(np.float64)
                nll -= z[tokens[b, t]] - np.log(np.exp(z).sum())
                hits += int(np.argmax(z) == tokens[b, t])
                n += 1
    assert float(loss) == pytest.approx(nll / n, rel=1e-5)
    assert float(m["num_tokens"]) == n and float(m["accuracy"]) == pytest.approx(hits / n)
    empty, _ = sft.sft_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.zeros((B, T)))
    assert float(empty) == 0.0


def test_head_token_stats_in_chunks_matches_numpy_values_and_gradients():
    """The LM head run in chunks of columns (logprobs.head_token_stats): log-probs, entropy and
    argmax hits against numpy (float64), and the gradients of a loss through it (w.r.t. the hidden
    states and the head's weight) equal to those of the head run at once."""
    import jax

    from grlhfv_jax.rl import logprobs as lpm

    rng = np.random.default_rng(3)
    B, L, H, V, temp = 2, 7, 5, 11, 0.7
    h = rng.normal(size=(B, L, H)).astype(np.float32)
    w = rng.normal(size=(H, V)).astype(np.float32)
    t = rng.integers(0, V, (B, L))
    z = (h.astype(np.float64) @ w) / temp
    logz = np.log(np.exp(z).sum(-1))
    lp_ref = np.take_along_axis(z, t[..., None], -1)[..., 0] - logz
    p = np.exp(z - logz[..., None])
    ent_ref = -(p * np.log(p)).sum(-1)
    hit_ref = z.argmax(-1) == t

    def loss(h, w, chunk):
        st = lpm.head_token_stats(lambda x: x @ w, h, jnp.asarray(t), temp, chunk, entropy=True, argmax=True)
        return jnp.sum(st["logp"] * jnp.arange(L)) + 0.3 * jnp.sum(st["entropy"]), st

    grads = {}
    for chunk in (0, 3, 7, 16):  # off, 3 pieces (the last padded), one piece, longer than L
        (_, st), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(jnp.asarray(h), jnp.asarray(w), chunk)
        np.testing.assert_allclose(np.asarray(st["logp"]), lp_ref, rtol=1e-5, atol=1e-5, err_msg=str(chunk))
        np.testing.assert_allclose(np.asarray(st["entropy"]), ent_ref, rtol=1e-5, atol=1e-5, err_msg=str(chunk))
        np.testing.assert_array_equal(np.asarray(st["argmax_hit"]), hit_ref)
        assert st["logp"].shape == (B, L)
        grads[chunk] = g
    for chunk in (3, 7, 16):
        for a, b in zip(grads[chunk], grads[0]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=str(chunk))
    assert float(jnp.max(jnp.abs(grads[0][1]))) > 1e-3  # the head's weight really gets a gradient
