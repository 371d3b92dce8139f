"""`scan_layers`: the decoder layers stored stacked [L, ...] and run by a scan give the math of the
unrolled model (logits with images, the KV cache and the sampler, shared_prompt_hidden, gradients
and one GRPO update with remat), load transformers' checkpoints (logit parity) and export the same
safetensors; weight decay skips the stacked biases and norms; the config key is checked and
reaches the model. Tiny 3-layer checkpoints of both families."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import tiny_models as tm
from grlhfv_jax import config as config_schema
from grlhfv_jax import roles, sharding
from grlhfv_jax.models import load_pretrained, save_pretrained
from grlhfv_jax.rl import optim
from grlhfv_jax.rollout import engine
from grlhfv_jax.trainers import steps
from test_shared_prompt import G, P, R, batch  # noqa: F401  (the module-scoped GRPO batch fixture)

L = 3
TOL = 1e-4  # against transformers (as test_models_qwen2_vl)
SAME = 1e-5  # scan against the unrolled model: the same operations
IMG_ROWS = [[[5, 6, 7, 8, 9], (1, 8, 12), [10, 11, 12, 13]], [[3, 4], (1, 6, 4), [14], (1, 4, 4), [15, 16, 17, 18]]]
RT = dict(remat=True, remat_policy="dots")


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def models(request, tmp_path_factory):
    """(family, checkpoint path, torch model, unrolled model, scanned model), both with remat."""
    fam = request.param
    path, tmodel = tm.build_and_save(tmp_path_factory.mktemp(fam), fam, seed=2, text=dict(num_hidden_layers=L))
    return fam, path, tmodel, load_pretrained(path, **RT), load_pretrained(path, scan_layers=True, **RT)


def _layers(model):
    """Pure dict of the decoder layers' parameters: stacked {name: [L, ...]} or {i: {name: ...}}."""
    return nnx.to_pure_dict(nnx.state(model.model.layers, nnx.Param))


def _assert_stacked_equal(stacked, per_slot, tol, what):
    tm.assert_stacked_equal(stacked, per_slot, tol, what, L)


_fwd = nnx.jit(lambda m, x, a, pv, g: m(x, a, pv, g))


def _logits(model, b):
    return np.asarray(_fwd(model, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))


def test_stacked_params_their_axes_and_shardings(models):
    fam, path, tmodel, unrolled, scanned = models
    assert scanned.config.scan_layers and not unrolled.config.scan_layers
    _assert_stacked_equal(_layers(scanned), _layers(unrolled), 0, "weights")
    q = scanned.model.layers.self_attn.q_proj
    assert q.kernel.get_value().shape == (L, 64, 64) and q.bias.get_value().shape == (L, 64)
    assert q.kernel.get_metadata()["logical_axes"] == ("layers", "embed", "q_heads")
    assert scanned.model.layers.input_layernorm.weight.get_metadata()["logical_axes"] == ("layers", "norm")
    # on a (1, 2, 2) mesh: the layer axis replicated, the other axes as one layer's
    mesh = sharding.make_mesh((1, 2, 2), devices=jax.devices()[:4])
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    got = jax.tree.leaves(sharding.model_shardings(scanned.model.layers, mesh), is_leaf=is_var)
    want = jax.tree.leaves(sharding.model_shardings(unrolled.model.layers[0], mesh), is_leaf=is_var)
    assert len(got) == len(want) == 12
    for a, b in zip(got, want):
        spec = (None,) + tuple(b.get_value().spec)
        while spec and spec[-1] is None:
            spec = spec[:-1]
        assert tuple(a.get_value().spec) == spec, (a, b)
    assert tuple(scanned.model.layers.mlp.up_proj.kernel.get_value().shape) == (L, 64, 96)
    assert tuple(got[-1].get_value().spec) or tuple(got[0].get_value().spec)  # some axis is sharded


def test_logits_equal_transformers_and_the_unrolled_model(models):
    fam, path, tmodel, unrolled, scanned = models
    b = tm.make_batch(IMG_ROWS, pad_side="left", seed=1)
    got, m = _logits(scanned, b), b["attention_mask"].astype(bool)
    ref = tm.torch_forward(tmodel, b).logits.numpy()
    assert np.abs(got - ref)[m].max() <= TOL
    assert np.abs(got - _logits(unrolled, b))[m].max() <= SAME


def test_kv_cache_prefill_decode_and_the_sampler(models):
    """Prefill into a stacked cache and into per-layer tuples (returned stacked), then decode
    steps at a traced slot: the unrolled model's outputs and caches. Greedy sampling gives the
    same tokens and log-probs."""
    fam, path, tmodel, unrolled, scanned = models
    b = tm.make_batch(IMG_ROWS, pad_side="left", seed=1)
    B, T = b["input_ids"].shape
    args = (b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"])
    out_u, cache_u = unrolled(*args, cache=unrolled.init_cache(B, T + 4), cache_index=0)
    c = scanned.init_cache(B, T + 4)
    out_s, cache_s = scanned(*args, cache=c, cache_index=0)
    out_t, cache_t = scanned(*args, cache=dict(c, k=tuple(c["k"]), v=tuple(c["v"])), cache_index=0)
    for out, cache in ((out_s, cache_s), (out_t, cache_t)):
        assert cache["k"].shape == cache_u["k"].shape and cache["v"].shape == cache_u["v"].shape
        np.testing.assert_allclose(np.asarray(out), np.asarray(out_u), atol=SAME)
        for k in ("k", "v"):
            np.testing.assert_allclose(np.asarray(cache[k]), np.asarray(cache_u[k]), atol=SAME)
        np.testing.assert_array_equal(np.asarray(cache["mask"]), np.asarray(cache_u["mask"]))

    @nnx.jit
    def decode(model, ids, cache, slot):
        pos = jnp.broadcast_to(slot, (3, ids.shape[0], 1)).astype(jnp.int32)
        return model(ids, jnp.ones_like(ids), position_ids=pos, cache=cache, cache_index=slot)

    ids = jnp.asarray([[7], [9]], jnp.int32)
    for step in range(2):
        slot = jnp.asarray(T + step, jnp.int32)
        out_u, cache_u = decode(unrolled, ids, cache_u, slot)
        out_s, cache_s = decode(scanned, ids, cache_s, slot)
        np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_u), atol=SAME)
        for k in ("k", "v"):
            np.testing.assert_allclose(np.asarray(cache_s[k]), np.asarray(cache_u[k]), atol=SAME)
        ids = ids + 1
    gen_u = engine.generate(unrolled, b, max_new_tokens=4, temperature=0.0, eos_token_id=None)
    gen_s = engine.generate(scanned, b, max_new_tokens=4, temperature=0.0, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(gen_s.tokens), np.asarray(gen_u.tokens))
    np.testing.assert_allclose(np.asarray(gen_s.logprobs), np.asarray(gen_u.logprobs), atol=SAME)


def test_shared_prompt_hidden_and_gradients_equal_the_unrolled_model(models, batch):  # noqa: F811
    """With remat ("dots") inside the scan: shared_prompt_hidden, and the gradients of a loss of
    the logits w.r.t. every parameter (stacked slot i = layer i's gradient)."""
    fam, path, tmodel, unrolled, scanned = models
    b, Tp, _ = batch
    pos, _ = unrolled.rope_index(b["input_ids"], b["attention_mask"], b["image_grid_thw"])
    emb = unrolled.encode_images(b["pixel_values"], b["image_grid_thw"])
    hid = [
        np.asarray(
            m.shared_prompt_hidden(
                b["input_ids"], b["attention_mask"], group=G, prompt_len=Tp, position_ids=pos, image_embeds=emb
            )
        )
        for m in (unrolled, scanned)
    ]
    assert hid[0].shape == (P * G, R, 64)
    np.testing.assert_allclose(hid[1], hid[0], atol=SAME)

    ib = tm.make_batch(IMG_ROWS, pad_side="left", seed=1)
    w = jnp.asarray(np.random.default_rng(0).normal(size=ib["input_ids"].shape + (tm.VOCAB,)), jnp.float32)

    def loss(model):
        out = model(ib["input_ids"], ib["attention_mask"], ib["pixel_values"], ib["image_grid_thw"])
        return jnp.sum(jnp.tanh(out) * w * ib["attention_mask"][..., None])

    graphdef, state = nnx.split(scanned)
    jaxpr = str(jax.make_jaxpr(lambda s: loss(nnx.merge(graphdef, s)))(state))
    assert re.search(r"scan\[.*(checkpoint|remat2)\[", jaxpr, re.S), "remat inside the scan"
    grad = nnx.jit(nnx.grad(loss))
    g_u, g_s = nnx.to_pure_dict(grad(unrolled)), nnx.to_pure_dict(grad(scanned))
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_u))
    _assert_stacked_equal(g_s["model"].pop("layers"), g_u["model"].pop("layers"), 1e-5 * scale, "grads")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale), g_s, g_u)


def test_export_round_trips_to_the_same_safetensors(models, tmp_path):
    fam, path, tmodel, unrolled, scanned = models
    save_pretrained(scanned, tmp_path)
    want, got = load_file(f"{path}/model.safetensors"), load_file(f"{tmp_path}/model.safetensors")
    assert sorted(got) == sorted(want) and f"model.layers.{L - 1}.self_attn.q_proj.bias" in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    again = load_pretrained(tmp_path, scan_layers=True)
    _assert_stacked_equal(_layers(again), _layers(unrolled), 0, "reloaded")


def test_decay_mask_does_not_count_the_layer_axis(models):
    fam, path, tmodel, unrolled, scanned = models

    def masks(model):
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
        return {re.sub(r"layers\.\d+\.", "layers.", ".".join(str(k.key) for k in p)): m for p, m in flat}

    got, want = masks(scanned), masks(unrolled)
    assert got == want
    assert got["model.layers.self_attn.q_proj.kernel"] and not got["model.layers.self_attn.q_proj.bias"]
    assert not got["model.layers.input_layernorm.weight"] and got["model.embed_tokens.weight"]
    # by path: a stacked [L, d] bias is a vector; a [L, in, out] kernel a matrix
    tree = {
        "model": {
            "layers": {"mlp": {"kernel": jnp.zeros((3, 4, 5))}, "norm": {"weight": jnp.zeros((3, 4))}},
            "other": {"kernel": jnp.zeros((4, 5))},
        }
    }
    assert jax.tree.leaves(optim.decay_mask(tree)) == [True, False, True]


@pytest.mark.parametrize("models", ["qwen2_vl"], indirect=True)  # one family is enough for the update
def test_one_grpo_update_equals_the_unrolled_models(models, batch):  # noqa: F811
    """One GRPO step (shared prompts, the response window, AdamW with weight decay and clipping):
    the same metrics and the same updated parameters."""
    fam, path, *_ = models
    assert fam == "qwen2_vl"
    b, Tp, _ = batch
    jb = {k: jnp.asarray(v) for k, v in b.items()}
    cfg = steps.GRPOConfig(num_micro_batches=2)
    out = []
    for scan in (False, True):
        tx, schedule = optim.make_optimizer(learning_rate=1e-2, total_steps=4, warmup_steps=0, weight_decay=0.5)
        state = steps.TrainState(load_pretrained(path, scan_layers=scan, **RT), tx, schedule)
        state, met = steps.grpo_step(state, jb, cfg, window=R, group=G)
        out.append((met, state.model))
    (m_u, unrolled), (m_s, scanned) = out
    for k in ("loss", "kl", "grad_norm"):
        np.testing.assert_allclose(float(m_s[k]), float(m_u[k]), rtol=1e-5, err_msg=k)
    _assert_stacked_equal(_layers(scanned), _layers(unrolled), 1e-6, "updated weights")
    before = load_pretrained(path)
    assert not np.allclose(
        np.asarray(before.model.layers[1].self_attn.q_proj.bias.get_value()),
        np.asarray(unrolled.model.layers[1].self_attn.q_proj.bias.get_value()),
    )


def test_the_config_key_is_checked_and_reaches_the_model():
    from grlhfv_jax.config import ConfigError, sections
    from test_config_schema import demo

    assert sections.MODEL["scan_layers"].default is False
    config = demo()
    with config.unlocked():
        config.model.grm["scan_layers"] = "yes"
    with pytest.raises(ConfigError, match=r"^config\.model\.grm\.scan_layers = 'yes': expected bool"):
        config_schema.validate(config)
    rt = roles.runtime(config_schema.typed_section(sections.MODEL, dict(hf_config={}, scan_layers=True)))
    assert rt["scan_layers"] is True
    assert roles.runtime(config_schema.typed_section(sections.MODEL, dict(hf_config={})))["scan_layers"] is False
    from grlhfv_jax import models as M

    model = nnx.eval_shape(lambda: M.from_config(tm.tiny_hf_config("qwen2_vl").to_dict(), **rt))
    assert model.config.scan_layers and not isinstance(model.model.layers, nnx.List)
