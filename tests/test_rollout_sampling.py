"""Sampling math against numpy references, and the decode loop's bookkeeping (EOS, truncation,
padding, grouping of samples, log-probs, rng) on a hand-made model with known logits."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grlhfv_jax.models.qwen2_vl import QwenImages
from grlhfv_jax.rollout import engine, judge, sampling

# ----------------------------------------------------------------------------- numpy references
# transformers' warpers, written out in numpy (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)


def np_filter(logits, temperature, top_k, top_p):
    x = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth = np.sort(x, axis=-1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(x, axis=-1, kind="stable")  # ascending
        xs = np.take_along_axis(x, order, -1)
        e = np.exp(xs - xs.max(-1, keepdims=True))
        cum = np.cumsum(e / e.sum(-1, keepdims=True), axis=-1)
        remove_sorted = cum <= 1 - top_p
        remove_sorted[:, -1] = False  # keep at least one
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, -1)
        x = np.where(remove, -np.inf, x)
    return x


def np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(6, 50)) * 2.0).astype(np.float32)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.9), (1.3, 0, 0.5), (0.8, 10, 0.8), (1.0, 1, 0.3), (2.0, 0, 0.05)],
)
def test_filter_matches_numpy(logits, temperature, top_k, top_p):
    ours = np.asarray(sampling.filter_logits(jnp.asarray(logits), temperature=temperature, top_k=top_k, top_p=top_p))
    ref = np_filter(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    np.testing.assert_allclose(ours[np.isfinite(ours)], ref[np.isfinite(ref)], rtol=1e-6)


def test_hand_computed_top_p_top_k():
    # probs 0.5, 0.25, 0.125, 0.125 (log-space); top_p 0.6 keeps {0.5, 0.25}; 0.75 keeps those two too
    # (mass before the third is exactly 0.75, not < 0.75); 0.76 keeps three; top_k 3 keeps three
    # plus the tie at the 3rd value.
    x = jnp.log(jnp.asarray([[0.125, 0.5, 0.125, 0.25]], jnp.float32))
    keep = lambda **kw: np.isfinite(np.asarray(sampling.filter_logits(x, **kw)))[0].tolist()
    assert keep(top_p=0.6) == [False, True, False, True]
    assert keep(top_p=0.75) == [False, True, False, True]
    assert keep(top_p=0.76) == [True, True, True, True]  # tie at 0.125: both kept (threshold rule)
    assert keep(top_k=1) == [False, True, False, False]
    assert keep(top_k=3) == [True, True, True, True]
    assert keep(top_k=2, top_p=0.5) == [False, True, False, False]


def test_sampling_frequencies_and_support():
    # 4000 draws from a filtered distribution: never outside the support, frequencies close to the
    # renormalised probabilities (numpy), 5 sigma.
    base = np.log(np.asarray([0.05, 0.4, 0.02, 0.3, 0.23], np.float64))
    x = jnp.asarray(np.tile(base, (4000, 1)), jnp.float32)
    filt = sampling.filter_logits(x, temperature=0.9, top_k=4, top_p=0.85)
    toks = np.asarray(sampling.sample_from_logits(jax.random.key(3), filt))
    ref = np_filter(base[None], 0.9, 4, 0.85)[0]
    p = np.exp(ref - np.logaddexp.reduce(ref[np.isfinite(ref)]))
    p[~np.isfinite(ref)] = 0
    freq = np.bincount(toks, minlength=5) / len(toks)
    assert set(np.unique(toks)) <= set(np.flatnonzero(p > 0))
    sigma = np.sqrt(p * (1 - p) / len(toks)) + 1e-9
    assert np.all(np.abs(freq - p) <= 5 * sigma), (freq, p)


def test_blocked_sampling_across_blocks():
    # V = 300 with blocks of 128: three blocks, the last one padded. The mass sits on a few tokens
    # at block edges (0, 127, 128, 255, 256, 299) plus a spread-out tail; -inf tokens never appear.
    rng = np.random.default_rng(0)
    base = rng.normal(size=300)
    base[[0, 127, 128, 255, 256, 299]] += 4.0
    base[rng.choice(300, 40, replace=False)] = -np.inf
    base[[0, 127, 128, 255, 256, 299]] = np.maximum(base[[0, 127, 128, 255, 256, 299]], 3.0)
    p = np.exp(base - np.logaddexp.reduce(base[np.isfinite(base)]))
    x = jnp.asarray(np.tile(base, (20000, 1)), jnp.float32)
    toks = np.asarray(sampling.sample_from_logits(jax.random.key(5), x, block=128))
    assert np.isfinite(base[toks]).all()
    freq = np.bincount(toks, minlength=300) / len(toks)
    sigma = np.sqrt(p * (1 - p) / len(toks)) + 1e-9
    assert np.all(np.abs(freq - p) <= 5 * sigma), np.abs(freq - p).max()
    # all the mass in the padded last block: only its finite tokens come out
    one = np.full(300, -np.inf)
    one[[260, 299]] = [0.0, np.log(3.0)]
    toks = np.asarray(sampling.sample_from_logits(jax.random.key(6), jnp.asarray(np.tile(one, (4000, 1)), jnp.float32)))
    assert set(np.unique(toks)) == {260, 299}
    assert abs(np.mean(toks == 299) - 0.75) < 5 * np.sqrt(0.75 * 0.25 / 4000)


def test_token_logprobs_and_rng(logits):
    toks = jnp.asarray([0, 3, 49, 7, 7, 1], jnp.int32)
    ours = np.asarray(sampling.token_logprobs(jnp.asarray(logits), toks))
    ref = np_log_softmax(logits)[np.arange(6), np.asarray(toks)]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    x = jnp.asarray(logits)
    a = sampling.sample_from_logits(jax.random.key(7), x)
    b = sampling.sample_from_logits(jax.random.key(7), x)
    draws = {tuple(np.asarray(sampling.sample_from_logits(jax.random.key(s), x))) for s in range(8)}
    np.testing.assert_array_equal(a, b)
    assert len(draws) > 1


# ----------------------------------------------------------------------------- decode loop on a toy model

V = 16
ToyConfig = collections.namedtuple("ToyConfig", "spatial_merge_size image_token_id")


class ToyLM(nnx.Module):
    """Follows the model interface (init_cache / rope_index / cached forward). Its next-token
    logits are 4 * one_hot((position of the current token + 1) % V) plus a small bias, so greedy
    output reveals the M-RoPE positions the sampler feeds (real prompt tokens sit at 1000, 1001, ...
    whatever the left padding), and every log-prob is known in closed form."""

    def __init__(self):
        self.bias = nnx.Param(jnp.linspace(0.0, 0.5, V))
        self.config = ToyConfig(spatial_merge_size=2, image_token_id=99)

    def init_cache(self, batch, max_len, dtype=None):
        return {
            "k": jnp.zeros((1, batch, max_len, 1, 1), jnp.float32),
            "v": jnp.zeros((1, batch, max_len, 1, 1), jnp.float32),
            "mask": jnp.zeros((batch, max_len), bool),
        }

    shared_prompt = False  # the family contract (`models.contract.VLModel`)
    group_images = False

    @property
    def image_layout(self):
        return QwenImages(self.config.image_token_id, self.config.spatial_merge_size)

    def text_position_ids(self, positions):
        return jnp.broadcast_to(positions[None], (3,) + positions.shape).astype(jnp.int32)

    def patch_unit(self):
        return 64

    def rope_index(self, input_ids, attention_mask, image_grid_thw):
        real = attention_mask > 0
        pos = jnp.where(real, jnp.cumsum(attention_mask, 1) - 1 + 1000, 1).astype(jnp.int32)
        return jnp.broadcast_to(pos[None], (3,) + pos.shape), jnp.zeros(pos.shape[0], jnp.int32)

    def __call__(self, input_ids, attention_mask=None, *, position_ids=None, cache=None, cache_index=None, **kw):
        mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask.astype(bool), (0, cache_index))
        logits = 4.0 * jax.nn.one_hot((position_ids[0] + 1) % V, V) + self.bias[...]
        return logits, {"k": cache["k"], "v": cache["v"], "mask": mask}  # "hidden" = logits

    def logits(self, h):
        return h


@pytest.fixture(scope="module")
def toy():
    return ToyLM()


def _toy_batch():
    # row 0: 3 real tokens (positions 1000..1002), row 1: 5 real tokens (1000..1004), left padded
    ids = np.asarray([[0, 0, 5, 6, 2], [3, 4, 7, 8, 9]], np.int32)
    mask = np.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
    return {"input_ids": ids, "attention_mask": mask}


BIAS = np.linspace(0.0, 0.5, V)


def toy_logprob(prev_pos, tok):
    return np_log_softmax((4.0 * np.eye(V)[(prev_pos + 1) % V] + BIAS)[None])[0, tok]


def test_toy_greedy_eos_truncation_logprobs(toy):
    # greedy tokens are (position + 1) % 16: row 0 starts at 1003 % 16 = 11, row 1 at 1005 % 16 = 13
    out = engine.generate(
        toy, _toy_batch(), max_new_tokens=6, temperature=0.0, eos_token_id=[0, 7], num_samples=2, pad_token_id=-1
    )
    exp0 = [11, 12, 13, 14, 15, 0]  # EOS exactly at the last step: finished
    exp1 = [13, 14, 15, 0, -1, -1]  # EOS at step 4, then padding
    np.testing.assert_array_equal(np.asarray(out.tokens), [exp0, exp0, exp1, exp1])
    np.testing.assert_array_equal(np.asarray(out.lengths), [6, 6, 4, 4])
    np.testing.assert_array_equal(np.asarray(out.finished), [True] * 4)
    lps = np.asarray(out.logprobs)
    for r, (seq, p0) in enumerate(zip([exp0, exp0, exp1, exp1], [1002, 1002, 1004, 1004])):
        for t, tok in enumerate(seq):
            if tok < 0:
                assert lps[r, t] == 0.0
            else:
                np.testing.assert_allclose(lps[r, t], toy_logprob(p0 + t, tok), atol=1e-6)
    # truncation: row 0 never reaches EOS 0 in 5 steps, row 1 does at step 4 (eos as an int)
    out = engine.generate(toy, _toy_batch(), max_new_tokens=5, temperature=0.0, eos_token_id=0)
    np.testing.assert_array_equal(np.asarray(out.tokens), [[11, 12, 13, 14, 15], [13, 14, 15, 0, 0]])
    np.testing.assert_array_equal(np.asarray(out.finished), [False, True])
    np.testing.assert_array_equal(np.asarray(out.lengths), [5, 4])
    # no EOS at all: every row runs to the end
    out = engine.generate(toy, _toy_batch(), max_new_tokens=3, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.finished), [False, False])
    np.testing.assert_array_equal(np.asarray(out.tokens), [[11, 12, 13], [13, 14, 15]])


def test_toy_sampling_rng(toy):
    kw = dict(max_new_tokens=7, temperature=1.5, top_k=8, top_p=0.95, num_samples=3)
    a = engine.generate(toy, _toy_batch(), rng=jax.random.key(11), **kw)
    b = engine.generate(toy, _toy_batch(), rng=jax.random.key(11), **kw)
    c = engine.generate(toy, _toy_batch(), rng=jax.random.key(12), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))
    t = np.asarray(a.tokens)
    assert not (np.array_equal(t[0], t[1]) and np.array_equal(t[1], t[2]))  # samples are independent
    # each sampled token's log-prob is the raw (temperature 1, unfiltered) model's
    for r in range(6):
        p0 = 1002 if r < 3 else 1004
        for s in range(7):
            np.testing.assert_allclose(a.logprobs[r, s], toy_logprob(p0 + s, t[r, s]), atol=1e-6)
    # and it was drawn from the filtered distribution: never outside top-8 of the row's logits
    for r in range(6):
        p0 = 1002 if r < 3 else 1004
        for s in range(7):
            lg = 4.0 * np.eye(V)[(p0 + s + 1) % V] + BIAS
            assert lg[t[r, s]] >= np.sort(lg)[-8]


def test_toy_no_recompile_within_buckets(toy):
    # prompt lengths 5 and 7 share the bucket 8, max_new_tokens 5 and 7 the buffer 8: no new executables
    engine.generate(toy, _toy_batch(), max_new_tokens=5, temperature=0.0)
    sizes = engine._prefill._cache_size(), engine._decode._cache_size()
    b = _toy_batch()
    b = {k: np.concatenate([np.zeros((2, 2), np.int32) + (k == "input_ids") * 3, v], axis=1) for k, v in b.items()}
    out = engine.generate(toy, b, max_new_tokens=7, temperature=0.0)
    assert (engine._prefill._cache_size(), engine._decode._cache_size()) == sizes
    np.testing.assert_array_equal(np.asarray(out.tokens)[0], [11, 12, 13, 14, 15, 0, 1])


def test_toy_judge_positions_and_samples(toy):
    # prefix rows of 3 and 5 real tokens; suffixes of 1..4 tokens. Positions must continue from the
    # prefix through each suffix (holes skipped), so greedy output starts at
    # (1000 + prefix + suffix) % 16; every sample row of a pair equals it.
    pre = _toy_batch()
    suffixes = [[[7], [7, 7, 7, 7]], [[8, 8], [8, 8, 8], [9]]]
    out = judge.judge_generate(toy, pre, suffixes, max_new_tokens=3, num_samples=2, pad_token_id=-1)
    firsts = [(1000 + p + len(s)) % V for p, sfx in zip((3, 5), suffixes) for s in sfx]
    exp = np.repeat([[(f + t) % V for t in range(3)] for f in firsts], 2, axis=0)
    np.testing.assert_array_equal(np.asarray(out.tokens), exp)
    assert out.tokens.shape == (10, 3)


class StackedToyLM(ToyLM):
    """A model whose cached forward updates the stacked [L, B, S, ...] cache itself (needs .dtype)."""

    def __call__(self, input_ids, attention_mask=None, *, position_ids=None, cache=None, cache_index=None, **kw):
        B, T = input_ids.shape
        k = jax.lax.dynamic_update_slice(
            cache["k"], jnp.ones((1, B, T, 1, 1), cache["k"].dtype), (0, 0, cache_index, 0, 0)
        )
        logits, new = super().__call__(
            input_ids, attention_mask, position_ids=position_ids, cache=cache, cache_index=cache_index
        )
        return logits, dict(new, k=k)


def test_decode_falls_back_to_stacked_cache():
    out = engine.generate(StackedToyLM(), _toy_batch(), max_new_tokens=5, temperature=0.0, eos_token_id=0)
    np.testing.assert_array_equal(np.asarray(out.tokens), [[11, 12, 13, 14, 15], [13, 14, 15, 0, 0]])


def test_bucket_length():
    assert [engine.bucket_length(n) for n in (1, 8, 9, 33, 64, 65, 128, 129)] == [8, 8, 16, 64, 64, 128, 128, 192]
