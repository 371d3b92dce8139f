"""PPO math (rl/ppo.py) against numpy references written here with plain loops, and hand-computed cases.

The references walk each row backwards over time (GAE) or token by token (losses); they share no code
with rl/ppo.py. The mutants at the end show the tests can fail: a GAE whose bootstrap is off by one
column, and one that bootstraps across the end of a response.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grlhfv_jax.rl import ppo

GAMMA, LAM = 0.9, 0.8


# --------------------------------------------------------------------------------------- references


def np_gae(rewards, values, mask, gamma, lam):
    """Row by row, backwards over the response tokens (mask 1); the value after a row's last response
    token is 0. Off-mask entries: 0."""
    n, t = rewards.shape
    adv = np.zeros((n, t))
    ret = np.zeros((n, t))
    for i in range(n):
        cols = [c for c in range(t) if mask[i, c] > 0]
        next_value, next_adv = 0.0, 0.0
        for c in reversed(cols):
            delta = rewards[i, c] + gamma * next_value - values[i, c]
            a = delta + gamma * lam * next_adv
            adv[i, c] = a
            ret[i, c] = a + values[i, c]
            next_value, next_adv = values[i, c], a
    return adv, ret


def np_token_rewards(scores, logp, ref_logp, mask, kl_coef, score_clip):
    n, t = logp.shape
    out = np.zeros((n, t))
    for i in range(n):
        cols = [c for c in range(t) if mask[i, c] > 0]
        for c in cols:
            out[i, c] = -kl_coef * (logp[i, c] - ref_logp[i, c])  # k1
        if cols:
            out[i, cols[-1]] += min(max(scores[i], -score_clip), score_clip)
    return out


def np_value_loss(values, old_values, returns, mask, value_clip):
    """0.5 * token-mean of max(unclipped, clipped) squared errors."""
    total, count = 0.0, 0.0
    for i in range(values.shape[0]):
        for c in range(values.shape[1]):
            if mask[i, c] > 0:
                d = values[i, c] - old_values[i, c]
                v_clip = old_values[i, c] + min(max(d, -value_clip), value_clip)
                total += max((values[i, c] - returns[i, c]) ** 2, (v_clip - returns[i, c]) ** 2)
                count += 1
    return 0.5 * total / count


def np_policy_loss(logp, old_logp, adv, mask, clip_eps):
    total, count = 0.0, 0.0
    for i in range(logp.shape[0]):
        for c in range(logp.shape[1]):
            if mask[i, c] > 0:
                ratio = math.exp(logp[i, c] - old_logp[i, c])
                clipped = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
                total += max(-adv[i, c] * ratio, -adv[i, c] * clipped)
                count += 1
    return total / count


def np_whiten(x, mask):
    vals = [x[i, c] for i in range(x.shape[0]) for c in range(x.shape[1]) if mask[i, c] > 0]
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            if mask[i, c] > 0:
                out[i, c] = (x[i, c] - mean) / math.sqrt(var + 1e-8)
    return out


def ragged_mask():
    """5 rows x 9 columns: prompts of different widths on the left (mask 0), responses of lengths
    4, 1, 6, 0 (empty) and 3, then padding."""
    mask = np.zeros((5, 9), np.float32)
    for i, (start, length) in enumerate([(2, 4), (5, 1), (1, 6), (3, 0), (6, 3)]):
        mask[i, start : start + length] = 1.0
    return mask


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    mask = ragged_mask()
    shape = mask.shape
    return dict(
        mask=mask,
        rewards=rng.normal(size=shape).astype(np.float32),  # nonzero off the mask too: must be ignored
        values=rng.normal(size=shape).astype(np.float32),
        logp=(-1.5 + 0.5 * rng.normal(size=shape)).astype(np.float32),
        ref_logp=(-1.5 + 0.5 * rng.normal(size=shape)).astype(np.float32),
        scores=np.array([80.0, -3.0, -120.0, 7.0, 49.5], np.float32),
    )


# ---------------------------------------------------------------------------------------------- GAE


def test_gae_hand_case():
    """One row, prompt column 0, response columns 1..3, padding column 4; gamma 0.5, lam 0.5.
    r = [_, 0, 0, 1, _], V = [_, 0.2, 0.4, 0.6, _]:
      t=3: delta = 1 + 0.5*0 - 0.6 = 0.4;           A = 0.4;                    R = 1.0
      t=2: delta = 0 + 0.5*0.6 - 0.4 = -0.1;        A = -0.1 + 0.25*0.4 = 0.0;   R = 0.4
      t=1: delta = 0 + 0.5*0.4 - 0.2 = 0.0;         A = 0.0 + 0.25*0.0 = 0.0;    R = 0.2"""
    r = np.array([[9.0, 0.0, 0.0, 1.0, 9.0]])
    v = np.array([[9.0, 0.2, 0.4, 0.6, 9.0]])
    m = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
    adv, ret = ppo.gae(r, v, m, gamma=0.5, lam=0.5)
    np.testing.assert_allclose(np.asarray(adv), [[0.0, 0.0, 0.0, 0.4, 0.0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), [[0.0, 0.2, 0.4, 1.0, 0.0]], atol=1e-6)


def test_gae_ragged_against_numpy(arrays):
    a = arrays
    want_adv, want_ret = np_gae(a["rewards"], a["values"], a["mask"], GAMMA, LAM)
    adv, ret = jax.jit(lambda r, v, m: ppo.gae(r, v, m, gamma=GAMMA, lam=LAM))(a["rewards"], a["values"], a["mask"])
    np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(adv)[a["mask"] == 0] == 0) and np.all(np.asarray(ret)[a["mask"] == 0] == 0)
    # gamma = lam = 1: the advantage is the sum of future rewards minus the value (Monte Carlo)
    adv1, _ = ppo.gae(a["rewards"], a["values"], a["mask"], gamma=1.0, lam=1.0)
    mc = np.zeros_like(want_adv)
    for i in range(5):
        cols = np.flatnonzero(a["mask"][i])
        for k, c in enumerate(cols):
            mc[i, c] = a["rewards"][i, cols[k:]].sum() - a["values"][i, c]
    np.testing.assert_allclose(np.asarray(adv1), mc, rtol=1e-5, atol=1e-5)


def test_whiten_and_estimator_registry(arrays):
    a = arrays
    adv, ret = np_gae(a["rewards"], a["values"], a["mask"], GAMMA, LAM)
    got = np.asarray(ppo.whiten(adv, a["mask"]))
    np.testing.assert_allclose(got, np_whiten(adv, a["mask"]), rtol=1e-5, atol=1e-6)
    sel = got[a["mask"] > 0]
    assert abs(sel.mean()) < 1e-5 and abs(sel.std(ddof=1) - 1) < 1e-4
    kw = dict(gamma=GAMMA, lam=LAM)
    got_adv, got_ret = ppo.compute_advantages(a["rewards"], a["values"], a["mask"], "gae", whiten_advantages=True, **kw)
    np.testing.assert_allclose(np.asarray(got_adv), np_whiten(adv, a["mask"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_ret), ret, rtol=1e-5, atol=1e-6)  # returns are never whitened
    raw, _ = ppo.compute_advantages(a["rewards"], a["values"], a["mask"], "gae", whiten_advantages=False, **kw)
    np.testing.assert_allclose(np.asarray(raw), adv, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="registered"):
        ppo.compute_advantages(a["rewards"], a["values"], a["mask"], "nope")
    # one masked entry: variance 0, no NaN (the entry becomes 0); an empty mask gives zeros
    one = np.zeros((2, 3), np.float32)
    one[1, 2] = 1.0
    np.testing.assert_array_equal(np.asarray(ppo.whiten(np.full((2, 3), 4.0), one)), np.zeros((2, 3)))
    np.testing.assert_array_equal(np.asarray(ppo.whiten(np.full((2, 3), 4.0), 0 * one)), np.zeros((2, 3)))


# ------------------------------------------------------------------------------------- token rewards


def test_token_rewards_hand_case():
    """kl_coef 0.5, score_clip 50. Row 0: response columns 1..2, score 80 -> clipped 50;
    k1 = logp - ref = [_, -1 - (-2), -0.5 - (-0.5)] = [_, 1, 0] -> rewards [0, -0.5, 50 - 0]. Row 1:
    response column 0 only, score -60 -> -50; k1 = -3 - (-1) = -2 -> -50 + 1 = -49; padding 0."""
    logp = np.array([[-9.0, -1.0, -0.5], [-3.0, -9.0, -9.0]])
    ref = np.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    mask = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rew, met = ppo.token_rewards(np.array([80.0, -60.0]), logp, ref, mask, kl_coef=0.5, score_clip=50.0)
    np.testing.assert_allclose(np.asarray(rew), [[0.0, -0.5, 50.0], [-49.0, 0.0, 0.0]], atol=1e-6)
    assert float(met["score_clip_frac"]) == 1.0 and float(met["score_mean"]) == 0.0
    np.testing.assert_allclose(float(met["kl_token_mean"]), (1 + 0 - 2) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(met["kl_seq_mean"]), (1 - 2) / 2, rtol=1e-6)


def test_token_rewards_against_numpy(arrays):
    a = arrays
    want = np_token_rewards(a["scores"], a["logp"], a["ref_logp"], a["mask"], 0.02, 50.0)
    got, met = jax.jit(lambda s, lp, rl, m: ppo.token_rewards(s, lp, rl, m, kl_coef=0.02, score_clip=50.0))(
        a["scores"], a["logp"], a["ref_logp"], a["mask"]
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[3] == 0)  # the empty row gets no score
    np.testing.assert_allclose(float(met["score_clip_frac"]), 2 / 5)
    np.testing.assert_allclose(float(met["score_mean"]), (50 - 3 - 50 + 7 + 49.5) / 5, rtol=1e-6)


# ------------------------------------------------------------------------------------------- losses


def test_value_loss_hand_case():
    """value_clip 1, token-mean over 3 tokens (the 4th is masked off):
      tok 1: v 2.0, old 0.0, R 3.0: v_clip = 1.0; max((2-3)^2, (1-3)^2) = 4   (clipped larger)
      tok 2: v 0.5, old 0.0, R 0.0: v_clip = 0.5; max(0.25, 0.25)    = 0.25
      tok 3: v -3,  old -1,  R -3:  v_clip = -2;  max(0, 1)           = 1     (clipped larger)
    loss = 0.5 * (4 + 0.25 + 1) / 3 = 0.875; clip fraction 2/3."""
    v = np.array([[2.0, 0.5, -3.0, 100.0]])
    old = np.array([[0.0, 0.0, -1.0, 0.0]])
    ret = np.array([[3.0, 0.0, -3.0, 0.0]])
    m = np.array([[1.0, 1.0, 1.0, 0.0]])
    loss, met = ppo.clipped_value_loss(v, old, ret, m, value_clip=1.0)
    np.testing.assert_allclose(float(loss), 0.875, rtol=1e-6)
    np.testing.assert_allclose(float(met["vf_clip_frac"]), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(met["value_error"]), (1 + 0.25 + 0) / 3, rtol=1e-6)


def test_value_loss_against_numpy(arrays):
    a = arrays
    rng = np.random.default_rng(1)
    old = a["values"]
    v = (old + 4.0 * rng.normal(size=old.shape)).astype(np.float32)  # some beyond the clip of 5
    _, ret = np_gae(a["rewards"], old, a["mask"], GAMMA, LAM)
    loss, met = ppo.VALUE_LOSSES["clipped"](v, old, ret, a["mask"], value_clip=5.0)
    np.testing.assert_allclose(float(loss), np_value_loss(v, old, ret, a["mask"], 5.0), rtol=1e-5)
    assert 0.0 < float(met["vf_clip_frac"]) < 1.0
    # the micro-batch convention: halves with the full token count sum to the whole
    den = a["mask"].sum()
    halves = [
        ppo.clipped_value_loss(v[s], old[s], ret[s], a["mask"][s], value_clip=5.0, denominator=den)[0]
        for s in (slice(0, 2), slice(2, 5))
    ]
    np.testing.assert_allclose(float(sum(halves)), float(loss), rtol=1e-5)


def test_policy_loss_hand_case():
    """clip_eps 0.2, token-mean over 2 tokens:
      tok 1: ratio e^0.5 = 1.6487, A = 1:  max(-1.6487, -1.2) = -1.2      (clipped)
      tok 2: ratio e^0 = 1,       A = -2: max(2, 2)           = 2
    loss = (-1.2 + 2) / 2 = 0.4; no KL term even though the log-probs differ from any reference."""
    logp = np.array([[0.0, -0.5, -1.0]])
    old = np.array([[0.0, -1.0, -1.0]])
    adv = np.array([[7.0, 1.0, -2.0]])
    m = np.array([[0.0, 1.0, 1.0]])
    loss, met = ppo.ppo_policy_loss(logp, old, adv, m, clip_eps=0.2)
    np.testing.assert_allclose(float(loss), 0.4, rtol=1e-6)
    np.testing.assert_allclose(float(met["clip_frac"]), 0.5)
    assert "kl" not in met


def test_policy_loss_against_numpy(arrays):
    a = arrays
    adv, _ = np_gae(a["rewards"], a["values"], a["mask"], GAMMA, LAM)
    old = a["logp"]
    rng = np.random.default_rng(2)
    logp = (old + 0.4 * rng.normal(size=old.shape)).astype(np.float32)
    loss, met = ppo.ppo_policy_loss(logp, old, adv.astype(np.float32), a["mask"], clip_eps=0.2)
    np.testing.assert_allclose(float(loss), np_policy_loss(logp, old, adv, a["mask"], 0.2), rtol=1e-5)
    assert 0.0 < float(met["clip_frac"]) < 1.0
    with pytest.raises(ValueError, match="registered"):
        ppo.ppo_policy_loss(logp, old, adv, a["mask"], clip_eps=0.2, policy_loss="nope")


# ------------------------------------------------------------------------------------------ mutants


def _gae_bootstrap_off_by_one(rewards, values, mask, *, gamma, lam):
    """A wrong GAE: bootstraps from the value two columns ahead instead of the next one."""
    r, v, m = (jnp.asarray(x, jnp.float32) for x in (rewards, values, mask))
    v_next = jnp.pad(v[:, 2:], ((0, 0), (0, 2))) * jnp.pad(m[:, 2:], ((0, 0), (0, 2)))
    delta = (r + gamma * v_next - v) * m

    def back(a_next, x):
        d, mk = x
        a = jnp.where(mk > 0, d + gamma * lam * a_next, a_next)
        return a, a * mk

    _, adv = jax.lax.scan(back, jnp.zeros(r.shape[0]), (delta.T, m.T), reverse=True)
    return adv.T, adv.T + v * m


def _gae_no_episode_end(rewards, values, mask, *, gamma, lam):
    """A wrong GAE: dense over all columns (the mask applied only at the end), so the last response
    token bootstraps from the padding column after it."""
    r, v, m = (jnp.asarray(x, jnp.float32) for x in (rewards, values, mask))
    v_next = jnp.pad(v[:, 1:], ((0, 0), (0, 1)))
    delta = r * m + gamma * v_next - v

    def back(a_next, d):
        a = d + gamma * lam * a_next
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros(r.shape[0]), delta.T, reverse=True)
    return adv.T * m, (adv.T + v) * m


@pytest.mark.parametrize("mutant", [_gae_bootstrap_off_by_one, _gae_no_episode_end])
def test_reference_catches_gae_mutants(arrays, mutant):
    a = arrays
    want_adv, _ = np_gae(a["rewards"], a["values"], a["mask"], GAMMA, LAM)
    adv, _ = mutant(a["rewards"], a["values"], a["mask"], gamma=GAMMA, lam=LAM)
    assert not np.allclose(np.asarray(adv), want_adv, rtol=1e-5, atol=1e-6)
    # and the hand case alone catches it too
    adv, _ = mutant(
        np.array([[9.0, 0.0, 0.0, 1.0, 9.0]]),
        np.array([[9.0, 0.2, 0.4, 0.6, 9.0]]),
        np.array([[0.0, 1.0, 1.0, 1.0, 0.0]]),
        gamma=0.5,
        lam=0.5,
    )
    assert not np.allclose(np.asarray(adv), [[0.0, 0.0, 0.0, 0.4, 0.0]], atol=1e-6)
