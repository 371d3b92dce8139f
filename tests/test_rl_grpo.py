"""GRPO advantages, loss, KL and log-prob helpers against hand cases and a numpy re-derivation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grlhfv_jax.rl import grpo
from grlhfv_jax.rl import logprobs as lp

# --------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_case():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    got = np.asarray(grpo.group_advantages(r))
    std = math.sqrt(((0.5**2) * 4) / 3)  # ddof=1
    np.testing.assert_allclose(got[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(got[1], 0.0, atol=0)  # zero-std group -> exactly 0


def test_group_advantages_numpy_reference():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(6, 5)).astype(np.float32)
    ref = np.empty_like(r)
    for g in range(6):
        m = sum(r[g]) / 5
        s = math.sqrt(sum((x - m) ** 2 for x in r[g]) / 4)
        ref[g] = (r[g] - m) / (s + 1e-6)
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(r)), ref, rtol=1e-5, atol=1e-6)


def test_group_of_one_and_other_estimators():
    r = np.array([[3.0], [-2.0]])
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(r)), r / (1 + 1e-6), rtol=1e-7)
    x = np.array([[1.0, 2.0, 6.0]])
    np.testing.assert_allclose(np.asarray(grpo.compute_advantages(x, "grpo_no_std")), [[-2.0, -1.0, 3.0]])
    np.testing.assert_allclose(np.asarray(grpo.compute_advantages(x, "rloo")), [[1 - 4.0, 2 - 3.5, 6 - 1.5]])
    with pytest.raises(ValueError, match="registered"):
        grpo.compute_advantages(x, "nope")


# ------------------------------------------------------------------------------ reference loss


def _ref_loss(logp, old, ref, adv, mask, clip=0.2, kl_coef=0.02, clip_c=None, ent=None, ent_coef=0.0):
    """verl's dp_actor loss, re-derived token by token in float64 numpy."""
    B, T = logp.shape
    adv = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, (B, T))
    pg = kl = e = clipped = 0.0
    n = 0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            n += 1
            ratio = math.exp(min(max(logp[b, t] - old[b, t], -20), 20))
            a = adv[b, t]
            l1, l2 = -a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)
            loss_t = max(l1, l2)
            clipped += l2 > l1
            if clip_c is not None and a < 0:
                loss_t = min(loss_t, -a * clip_c)
            pg += loss_t
            d = ref[b, t] - logp[b, t]
            kl += min(max(math.exp(d) - d - 1, -10), 10)
            if ent is not None:
                e += ent[b, t]
    if n == 0:
        return 0.0, 0.0, 0.0
    return pg / n + kl_coef * kl / n - ent_coef * e / n, pg / n, kl / n


def _random_case(rng, B=4, T=7, scale=0.3):
    logp = -np.abs(rng.normal(size=(B, T))) - 0.1
    old = logp + scale * rng.normal(size=(B, T))
    ref = logp + scale * rng.normal(size=(B, T))
    adv = rng.normal(size=(B,))
    mask = (rng.random((B, T)) < 0.7).astype(np.float64)
    mask[0] = 0.0  # an empty row
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("clip_c", [None, 3.0])
def test_policy_loss_matches_reference(clip_c):
    rng = np.random.default_rng(1)
    logp, old, ref, adv, mask = _random_case(rng, scale=0.5)
    adv[1] = -2.0  # make sure dual clip has negative advantages with large ratios
    old[1] = logp[1] - 2.0
    ent = rng.random(logp.shape)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    loss, m = grpo.policy_loss(
        f32(logp), f32(old), f32(ref), f32(adv), f32(mask), clip_ratio_c=clip_c, entropy=f32(ent), entropy_coef=0.01
    )
    want, pg, kl = _ref_loss(logp, old, ref, adv, mask, clip_c=clip_c, ent=ent, ent_coef=0.01)
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert float(m["pg_loss"]) == pytest.approx(pg, rel=1e-5, abs=1e-6)
    assert float(m["kl"]) == pytest.approx(kl, rel=1e-5, abs=1e-6)
    sel = mask > 0
    assert float(m["entropy"]) == pytest.approx(ent[sel].mean(), rel=1e-5)
    lr = (logp - old)[sel]
    assert float(m["ppo_kl"]) == pytest.approx(-lr.mean(), rel=1e-5)
    assert float(m["approx_kl"]) == pytest.approx(0.5 * (lr**2).mean(), rel=1e-5)
    a = np.broadcast_to(adv[:, None], logp.shape)[sel]
    ratio = np.exp(lr)
    frac = np.mean(-a * np.clip(ratio, 0.8, 1.2) > -a * ratio)
    assert float(m["clip_frac"]) == pytest.approx(frac, abs=1e-6)


def test_policy_loss_hand_case():
    # one token, A = 1, ratio = e^0.5 > 1.2 -> clipped: pg = -1.2; logp == ref -> kl = 0
    one = jnp.ones((1, 1))
    loss, m = grpo.policy_loss(0.5 * one - 1, -one, 0.5 * one - 1, jnp.ones((1,)), one)
    assert float(m["pg_loss"]) == pytest.approx(-1.2, rel=1e-6)
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(m["clip_frac"]) == 1.0
    # A = -1, ratio = e^2: unclipped pg = e^2; dual clip c = 3 caps it at 3
    _, m = grpo.policy_loss(one * 0.0, -2 * one, one * 0.0, -jnp.ones((1,)), one, clip_ratio_c=3.0)
    assert float(m["pg_loss"]) == pytest.approx(3.0, rel=1e-6)
    assert float(m["clip_frac_lower"]) == 1.0
    # k3: ref - logp = 1 -> e - 2
    _, m = grpo.policy_loss(0 * one, 0 * one, one, jnp.zeros((1,)), one)
    assert float(m["kl"]) == pytest.approx(math.e - 2, rel=1e-6)
    # k3 clamp at 10
    _, m = grpo.policy_loss(0 * one, 0 * one, 30 * one, jnp.zeros((1,)), one)
    assert float(m["kl"]) == pytest.approx(10.0)


def test_empty_mask_gives_zero_not_nan():
    z = jnp.zeros((2, 3))
    loss, m = grpo.policy_loss(z - 1, z - 2, z, jnp.ones((2,)), z, entropy=z + 1, entropy_coef=0.1)
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in m.values())
    g = jax.grad(lambda x: grpo.policy_loss(x, z - 2, z, jnp.ones((2,)), z)[0])(z - 1)
    assert np.all(np.asarray(g) == 0)


def test_per_token_advantages_and_denominator_split():
    rng = np.random.default_rng(2)
    logp, old, ref, adv, mask = _random_case(rng)
    adv_tok = np.broadcast_to(adv[:, None], logp.shape) * rng.random(logp.shape)
    want, _, _ = _ref_loss(logp, old, ref, adv_tok, mask)
    f = lambda x: jnp.asarray(x, jnp.float32)
    full, _ = grpo.policy_loss(f(logp), f(old), f(ref), f(adv_tok), f(mask))
    assert float(full) == pytest.approx(want, rel=1e-5)
    # micro-batches with the mini-batch token count sum to the full loss
    n = float(mask.sum())
    parts = [
        grpo.policy_loss(f(logp[s]), f(old[s]), f(ref[s]), f(adv_tok[s]), f(mask[s]), denominator=n)[0]
        for s in (slice(0, 2), slice(2, 4))
    ]
    assert float(sum(parts)) == pytest.approx(want, rel=1e-5)


def test_loss_aggregation_modes():
    loss_mat = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(grpo.LOSS_AGGREGATIONS["token-mean"](loss_mat, mask)) == pytest.approx(7 / 3)
    assert float(grpo.LOSS_AGGREGATIONS["seq-mean-token-sum"](loss_mat, mask)) == pytest.approx((3 + 4) / 2)
    assert float(grpo.LOSS_AGGREGATIONS["seq-mean-token-mean"](loss_mat, mask)) == pytest.approx((1.5 + 4) / 2)


def test_policy_loss_finite_difference_gradient():
    rng = np.random.default_rng(3)
    logp, old, ref, adv, mask = _random_case(rng, B=3, T=4, scale=0.15)
    with jax.enable_x64(True):
        f = lambda x: grpo.policy_loss(
            x, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), clip_ratio_c=3.0
        )[0]
        x0 = jnp.asarray(logp, jnp.float64)
        g = np.asarray(jax.grad(f)(x0))
        assert g.dtype == np.float64
        h = 1e-6
        fd = np.zeros_like(logp)
        for idx in np.ndindex(logp.shape):
            e = np.zeros_like(logp)
            e[idx] = h
            fd[idx] = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
    # also an independent check of the FD values against the numpy reference loss
    fd_np = np.zeros_like(logp)
    for idx in np.ndindex(logp.shape):
        e = np.zeros_like(logp)
        e[idx] = 1e-6
        fd_np[idx] = (
            _ref_loss(logp + e, old, ref, adv, mask, clip_c=3.0)[0]
            - _ref_loss(logp - e, old, ref, adv, mask, clip_c=3.0)[0]
        ) / 2e-6
    np.testing.assert_allclose(g, fd, atol=1e-7)
    np.testing.assert_allclose(g, fd_np, atol=1e-6)
    assert np.all(g[mask == 0] == 0) and np.any(g != 0)


def test_kl_penalized_rewards():
    mask = jnp.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], jnp.float32)
    logp = jnp.full((3, 4), -1.0)
    ref = jnp.full((3, 4), -1.5)
    tr = np.asarray(grpo.kl_penalized_rewards(jnp.array([2.0, 5.0, 1.0]), logp, ref, mask, kl_coef=0.1))
    want = np.array([[0, -0.05, 2 - 0.05, 0], [0, 0, 0, 0], [-0.05, -0.05, -0.05, 1 - 0.05]])
    np.testing.assert_allclose(tr, want, atol=1e-6)


def test_rollout_metrics():
    r = np.array([[1.0, 0.0, 1.0], [2.0, 2.0, 2.0]])
    m = grpo.rollout_metrics(
        r,
        advantages=[1.0, -1.0, 0.0, 0.0, 0.0, 2.0],
        response_lengths=[3, 5, 7, 9, 11, 1],
        truncated=[0, 0, 1, 0, 0, 0],
    )
    assert m["reward/mean"] == pytest.approx(8 / 6)
    assert m["reward/std"] == pytest.approx(math.sqrt(sum((x - 8 / 6) ** 2 for x in [1, 0, 1, 2, 2, 2]) / 5))
    assert m["reward/mean_group_std"] == pytest.approx((math.sqrt(1 / 3) + 0) / 2)
    assert m["reward/frac_groups_zero_std"] == 0.5
    assert m["advantages/max"] == 2.0 and m["advantages/min"] == -1.0
    assert m["response_length/mean"] == 6.0 and m["response_length/clip_ratio"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------------------------- log-probs


def test_token_and_aligned_logprobs_numpy():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32)
    ids = rng.integers(0, 11, (2, 5))
    out = np.asarray(lp.aligned_logprobs(jnp.asarray(logits), jnp.asarray(ids)))
    ent = np.asarray(lp.aligned_entropy(jnp.asarray(logits)))
    for b in range(2):
        assert out[b, 0] == 0 and ent[b, 0] == 0
        for t in range(1, 5):
            z = logits[b, t - 1].astype(np.float64)
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            assert out[b, t] == pytest.approx(math.log(p[ids[b, t]]), abs=1e-5)
            assert ent[b, t] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-5)
    tl = np.asarray(lp.token_logprobs(jnp.asarray(logits), jnp.asarray(ids)))
    z = logits.astype(np.float64)
    ref = np.take_along_axis(z, ids[..., None], -1)[..., 0] - np.log(np.exp(z).sum(-1))
    np.testing.assert_allclose(tl, ref, atol=1e-5)
    mask = np.array([[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]], np.float32)
    s = np.asarray(lp.sequence_logprob(jnp.asarray(out), jnp.asarray(mask)))
    np.testing.assert_allclose(s, [out[0, 2] + out[0, 3], 0.0], atol=1e-6)
    s = np.asarray(lp.sequence_logprob(jnp.asarray(out), jnp.asarray(mask), average=True))
    np.testing.assert_allclose(s, [(out[0, 2] + out[0, 3]) / 2, 0.0], atol=1e-6)
