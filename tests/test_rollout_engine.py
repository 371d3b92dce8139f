"""The sampler on tiny random Qwen2-VL / Qwen2.5-VL checkpoints: greedy tokens equal
transformers' generate, sampled log-probs equal a teacher-forced forward pass, the shared-prefix
judge equals judging each pair alone, and a sharded model gives the single-device output."""

import jax
import numpy as np
import pytest
from flax import nnx

import tiny_models as tm
from grlhfv_jax import encoding
from grlhfv_jax.models import load_pretrained
from grlhfv_jax.rollout import engine, group_sampling, judge

# text + image + text, text only (shorter: left padding), image + text
ROWS = [[[5, 6, 7, 8, 9], (1, 4, 4), [10, 11]], [[12, 13, 14, 15, 16, 17]], [(1, 4, 6), [20, 21]]]
NEW = 10


def _build(fam, tmp_path_factory):
    torch_model = tm.build_tiny_torch_model(fam, seed=1)
    path = tmp_path_factory.mktemp(fam)
    torch_model.save_pretrained(str(path))
    return fam, torch_model, load_pretrained(str(path)), str(path)


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    return _build("qwen2_vl", tmp_path_factory)


@pytest.fixture(scope="module")
def qwen2_5_vl(tmp_path_factory):
    return _build("qwen2_5_vl", tmp_path_factory)


def _images(batch):
    """pixel_values split per image."""
    n = np.prod(batch["image_grid_thw"], axis=1)
    return np.split(batch["pixel_values"], np.cumsum(n)[:-1])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_greedy_matches_transformers(family, request):
    import torch

    fam, torch_model, model, _ = request.getfixturevalue(family)
    batch = tm.make_batch(ROWS, seed=3)
    out = engine.generate(model, batch, max_new_tokens=NEW, temperature=0.0, eos_token_id=None)
    kw = dict(
        input_ids=torch.as_tensor(batch["input_ids"], dtype=torch.long),
        attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
        mm_token_type_ids=torch.as_tensor(batch["mm_token_type_ids"], dtype=torch.long),
        pixel_values=torch.as_tensor(batch["pixel_values"]),
        image_grid_thw=torch.as_tensor(batch["image_grid_thw"], dtype=torch.long),
    )
    with torch.no_grad():
        ref = torch_model.generate(
            **kw,
            do_sample=False,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            eos_token_id=None,
            pad_token_id=tm.PAD,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    ref = ref[:, batch["input_ids"].shape[1] :].numpy()
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.lengths), [NEW] * 3)
    assert not np.asarray(out.finished).any()


SAMPLE_KW = dict(max_new_tokens=NEW, temperature=1.3, top_k=40, top_p=0.95, eos_token_id=[tm.EOS, 7], num_samples=2)


@pytest.fixture(scope="module")
def sampled(qwen2_vl):
    """Single-device sampled output on the Qwen2-VL model (shared by three tests: one compile)."""
    batch = tm.make_batch(ROWS, seed=3)
    return batch, engine.generate(qwen2_vl[2], batch, rng=jax.random.key(5), **SAMPLE_KW)


def test_sampled_logprobs_equal_teacher_forcing(qwen2_vl, sampled):
    fam, _, model, _ = qwen2_vl
    batch, out = sampled
    n = SAMPLE_KW["num_samples"]
    toks, lps, lengths = np.asarray(out.tokens), np.asarray(out.logprobs), np.asarray(out.lengths)
    # teacher forcing: every prompt repeated n times (its images too), followed by its sampled tokens
    ids = np.concatenate([np.repeat(batch["input_ids"], n, 0), toks], axis=1)
    gen_mask = np.arange(NEW)[None] < lengths[:, None]
    mask = np.concatenate([np.repeat(batch["attention_mask"], n, 0), gen_mask.astype(np.int32)], axis=1)
    ids = np.where(mask > 0, ids, tm.PAD)
    imgs = _images(batch)
    pv = np.concatenate([imgs[k] for k in range(len(imgs)) for _ in range(n)])  # rows 0 and 2 hold the images
    grid = np.repeat(batch["image_grid_thw"], n, 0)
    logits = np.asarray(nnx.jit(lambda m, *a: m(*a))(model, ids, mask, pv, grid), np.float64)
    P = batch["input_ids"].shape[1]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = np.take_along_axis(logp[:, P - 1 : -1], toks[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.where(gen_mask, lps, 0), np.where(gen_mask, ref, 0), atol=1e-4)
    assert (lps[~gen_mask] == 0).all() and (toks[~gen_mask] == 0).all()
    # samples of one prompt are rows p*n .. p*n+n-1 and differ
    assert not np.array_equal(toks[0], toks[1])
    # finished iff the last kept token is an EOS; truncated rows ran to the end
    finished = np.asarray(out.finished)
    last = toks[np.arange(len(toks)), lengths - 1]
    np.testing.assert_array_equal(finished, np.isin(last, [tm.EOS, 7]))
    assert (lengths[~finished] == NEW).all()
    assert not np.isin(toks[gen_mask & (np.arange(NEW)[None] < lengths[:, None] - 1)], [tm.EOS, 7]).any()
    # same rng -> same samples
    again = engine.generate(model, batch, rng=jax.random.key(5), **SAMPLE_KW)
    np.testing.assert_array_equal(np.asarray(again.tokens), toks)


def _examples(batch):
    """The rows of a make_batch batch as encoded examples (what rollout.group_sampling.sample_groups takes)."""
    imgs, grid, k, out = _images(batch), batch["image_grid_thw"], 0, []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = ids[mask > 0]
        m = int((ids == tm.VISION_START).sum())
        pv = np.concatenate(imgs[k : k + m]) if m else np.zeros((0, tm.PATCH_DIM), np.float32)
        out.append(dict(input_ids=ids, pixel_values=pv, image_grid_thw=grid[k : k + m]))
        k += m
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_rollout_in_calls_of_prompt_groups_draws_what_one_call_draws(qwen2_vl, sampled, temperature):
    """sample_groups(num_calls=3): one prompt group per call (images split per call), each call's
    rows drawing their uniforms by their place in the step: the tokens, lengths and finished flags
    of one call exactly, log-probs to float rounding (XLA:CPU rounds matmuls of another row count
    differently: ~5e-7)."""
    from grlhfv_jax.rollout import EngineRollout, SamplingParams

    class Tok:  # the codec's tokenizer as far as sample_groups needs one
        def convert_tokens_to_ids(self, name):
            return {
                "<|image_pad|>": tm.IMAGE,
                "<|vision_start|>": tm.VISION_START,
                "<|vision_end|>": tm.VISION_END,
                "<|video_pad|>": tm.VIDEO,
            }[name]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    batch = sampled[0]
    # the sampled fixture's settings (its compiled one-call shapes); greedy: an EOS some rows hit
    eos = [tm.EOS, 7] if temperature else [tm.EOS, 45]
    codec = encoding.Codec(Tok(), None, tm.PAD, tm.EOS)
    rollout = EngineRollout(qwen2_vl[2], eos_token_id=eos, pad_token_id=tm.PAD)
    params = SamplingParams(max_new_tokens=NEW, temperature=temperature, top_k=40, top_p=0.95, num_samples=2, seed=5)
    (p1, one, t1), (p3, three, t3) = [
        group_sampling.sample_groups(
            rollout, codec, _examples(batch), max_len=batch["input_ids"].shape[1], params=params, num_calls=k
        )
        for k in (1, 3)
    ]
    if temperature:
        np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(sampled[1].tokens))  # the engine's own
    else:
        assert len(set(np.asarray(one.lengths).tolist())) > 1, one.lengths  # rows end at different lengths
    for name in ("tokens", "lengths", "finished"):
        np.testing.assert_array_equal(np.asarray(getattr(three, name)), np.asarray(getattr(one, name)), name)
    np.testing.assert_allclose(np.asarray(three.logprobs), np.asarray(one.logprobs), atol=1e-5)
    assert t3 == t1 and np.array_equal(p3["input_ids"], p1["input_ids"])


def test_judge_shared_prefix_equals_separate(qwen2_5_vl):
    fam, _, model, _ = qwen2_5_vl
    rng = np.random.default_rng(0)
    prefix_rows = [[[5, 6, 7], (1, 4, 4), [8, 9]], [(1, 4, 6), [20, 21, 22, 23, 24]]]
    suffixes = [[rng.integers(3, 99, k).tolist() for k in (4, 7, 2)], [rng.integers(3, 99, k).tolist() for k in (5, 1)]]
    pb = tm.make_batch(prefix_rows, seed=4)
    out = judge.judge_generate(model, pb, suffixes, max_new_tokens=NEW)
    # each pair alone: its full prompt (same image pixels), left padded in one batch
    full_rows = [prefix_rows[p] + [s] for p in range(2) for s in suffixes[p]]
    fb = tm.make_batch(full_rows)
    imgs = _images(pb)
    fb["pixel_values"] = np.concatenate([imgs[p] for p in range(2) for _ in suffixes[p]])
    ref = engine.generate(model, fb, max_new_tokens=NEW, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref.logprobs), atol=1e-4)


def test_sharded_equals_single_device(qwen2_vl, sampled):
    """Mesh (data 2, fsdp 1, tensor 4) on 8 fake CPU devices: the 6 sample rows split over data,
    heads over tensor; same tokens and log-probs as one device."""
    from grlhfv_jax import sharding

    fam, _, _, path = qwen2_vl
    batch, single = sampled
    mesh = sharding.make_mesh((2, 1, 4))
    sharded_model = load_pretrained(path)
    sharding.shard_model(sharded_model, mesh)
    out = engine.generate(sharded_model, batch, rng=jax.random.key(5), **SAMPLE_KW)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(single.tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(single.logprobs), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.finished), np.asarray(single.finished))
    assert len(out.tokens.sharding.device_set) == 8


def test_decode_runs_in_the_donated_per_layer_cache(qwen2_vl):
    """The prefill hands the decode loop per-layer cache arrays; the loop takes them donated and
    updates them in place: XLA aliases every cache byte to an output and keeps no working copy."""
    model = qwen2_vl[2]
    graphdef, state = nnx.split(model)
    batch = tm.make_batch(ROWS, seed=3)
    cache, logits, deltas, first = engine.prefill(
        (graphdef, state), batch, layout=model.image_layout, cache_len_extra=256, num_samples=2
    )
    L = model.config.num_hidden_layers
    assert isinstance(cache["k"], tuple) and len(cache["k"]) == L == len(cache["v"])
    cache_bytes = sum(a.nbytes for a in cache["k"] + cache["v"])
    args = (
        graphdef,
        state,
        cache,
        logits,
        deltas,
        np.zeros(len(logits), bool),
        jax.random.key(0),
        np.int32(first),
        np.int32(NEW),
        np.asarray([tm.EOS], np.int32),
        np.float32(1.0),
        np.float32(1.0),
        np.int32(tm.PAD),
    )
    mem = (
        engine._decode.lower(*args, greedy=False, top_k=0, use_top_p=False, buf_len=64, mesh=None)
        .compile()
        .memory_analysis()
    )
    assert mem.alias_size_in_bytes >= cache_bytes
    assert mem.temp_size_in_bytes < 0.5 * cache_bytes, (mem.temp_size_in_bytes, cache_bytes)
    out = engine.decode(
        (graphdef, state),
        cache,
        logits,
        deltas,
        first_slot=first,
        max_new_tokens=NEW,
        buf_len=64,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=None,
        rng=0,
    )
    assert all(a.is_deleted() for a in cache["k"])  # donated: the loop wrote into these buffers
    np.testing.assert_array_equal(np.asarray(out.lengths), [NEW] * 6)
