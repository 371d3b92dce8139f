"""`scan_vision`: the vision tower's blocks stored stacked [depth, ...] and run by one scan give the
math of the unrolled tower (outputs and gradients of every tower parameter, dense, banded and banded
in pieces, Qwen2.5's windowed and full-attention blocks in one program), load transformers'
checkpoints (logit parity) and export the same safetensors; weight decay skips the stacked biases
and norms; the stack axis is replicated and a sharded tower (8 fake devices) gives the same values;
the config key is checked and reaches the model. Tiny 3-block towers of both families."""

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
from grlhfv_jax.models.qwen2_vl.vision import VisionTower
from grlhfv_jax.rl import optim

DEPTH = 3  # Qwen2.5: block 1 full attention, blocks 0 and 2 windowed (tiny_models' window: 2 x 2 units)
TOL = 1e-4  # against transformers (as test_models_qwen2_vl)
SAME = 1e-5  # scan against the unrolled tower: the same operations
IMG_ROWS = [[[5, 6, 7, 8, 9], (1, 8, 12), [10, 11, 12, 13]], [[3, 4], (1, 6, 4), [14], (1, 4, 4), [15, 16, 17, 18]]]
GRID = np.asarray([(1, 8, 12), (1, 6, 4), (1, 4, 4)], np.int32)  # 136 patches, then 4 padding ones
N = 140
# runtime choices of the tower: dense; banded (blocks of the largest frame, 2 blocks); banded, one block a piece
VARIANTS = {
    "dense": dict(vision_block=0, vision_chunk=0),
    "banded": dict(vision_block=96, vision_chunk=0),
    "pieces": dict(vision_block=96, vision_chunk=96),
}
RT = dict(remat=True, remat_policy="dots")


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def models(request, tmp_path_factory):
    """(family, checkpoint path, torch model, unrolled model, scanned model), both with remat."""
    fam = request.param
    path, tmodel = tm.build_and_save(tmp_path_factory.mktemp(fam), fam, seed=3, vision=dict(depth=DEPTH))
    return fam, path, tmodel, load_pretrained(path, **RT), load_pretrained(path, scan_vision=True, **RT)


@pytest.fixture(scope="module")
def pixels():
    return jnp.asarray(np.random.default_rng(4).standard_normal((N, tm.PATCH_DIM)), jnp.float32)


def _blocks(model):
    """Pure dict of the tower blocks' parameters: stacked {name: [depth, ...]} or {i: {name: ...}}."""
    return nnx.to_pure_dict(nnx.state(model.visual.blocks, nnx.Param))


def _assert_stacked_equal(stacked, per_slot, tol, what):
    tm.assert_stacked_equal(stacked, per_slot, tol, what, DEPTH)


def _tower(model, **rt):
    """The model's vision tower (its weights) with runtime choices `rt` (vision_block, vision_chunk)."""
    tower = nnx.eval_shape(lambda: VisionTower(model.config.replace(**rt), nnx.Rngs(0)))
    nnx.update(tower, nnx.state(model.visual))
    return tower


def _weights():
    return jnp.asarray(np.random.default_rng(5).standard_normal((N // 4, 64)), jnp.float32)


def _value_and_grad(mesh=None):
    """jitted (tower, pixels, w) -> ((loss, out [N/4, 64]), grads of every tower parameter)."""

    def loss(tower, pv, w):
        out = tower(pv, jnp.asarray(GRID), mesh=mesh)
        return jnp.sum(jnp.tanh(out) * w), out

    return nnx.jit(nnx.value_and_grad(loss, has_aux=True))


def test_stacked_params_their_axes_and_shardings(models):
    fam, path, tmodel, unrolled, scanned = models
    assert scanned.config.scan_vision and not unrolled.config.scan_vision and not scanned.config.scan_layers
    assert isinstance(unrolled.visual.blocks, nnx.List) and not isinstance(scanned.visual.blocks, nnx.List)
    _assert_stacked_equal(_blocks(scanned), _blocks(unrolled), 0, "weights")
    qkv = scanned.visual.blocks.attn.qkv
    assert qkv.kernel.get_value().shape == (DEPTH, 32, 96) and qkv.bias.get_value().shape == (DEPTH, 96)
    assert qkv.kernel.get_metadata()["logical_axes"] == ("layers", "vision_embed", "vision_heads")
    # on a (1, 2, 2) mesh: the stack axis replicated, the other axes as one block's
    mesh = sharding.make_mesh((1, 2, 2), devices=jax.devices()[:4])
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    got = jax.tree.leaves(sharding.model_shardings(scanned.visual.blocks, mesh), is_leaf=is_var)
    want = jax.tree.leaves(sharding.model_shardings(unrolled.visual.blocks[0], mesh), is_leaf=is_var)
    assert len(got) == len(want) >= 10
    for a, b in zip(got, want):
        spec = (None,) + tuple(b.get_value().spec)
        while spec and spec[-1] is None:
            spec = spec[:-1]
        assert tuple(a.get_value().spec) == spec, (a, b)
    assert any(tuple(a.get_value().spec) for a in got)  # some axis is sharded


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tower_outputs_and_gradients_equal_the_unrolled_tower(models, pixels, variant):
    """Dense, banded and banded in pieces, remat ("dots") per block inside the scan: the tower's
    output (incl. the rows of the padding patches) and the gradient of a loss of it w.r.t. every
    tower parameter (stacked slot i = block i's gradient). Qwen2.5: the windowed blocks differ from
    the full-attention one (the scanned flag must pick each block's mask)."""
    fam, path, tmodel, unrolled, scanned = models
    rt = VARIANTS[variant]
    tu, ts = _tower(unrolled, **rt), _tower(scanned, **rt)
    w = _weights()
    f = _value_and_grad()
    (lu, out_u), g_u = f(tu, pixels, w)
    (ls, out_s), g_s = f(ts, pixels, w)
    assert out_u.shape == (N // 4, 64) and np.isfinite(np.asarray(out_u)).all()
    np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_u), atol=SAME)
    assert float(ls) == pytest.approx(float(lu), abs=1e-4)  # a sum of 2,240 terms that nearly cancel
    g_u, g_s = nnx.to_pure_dict(g_u), nnx.to_pure_dict(g_s)
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_u))
    _assert_stacked_equal(g_s.pop("blocks"), g_u.pop("blocks"), 1e-5 * scale, "grads")
    assert sorted(g_s) == sorted(g_u) == ["merger", "patch_embed"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale), g_s, g_u)

    graphdef, state = nnx.split(ts)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(pixels, jnp.asarray(GRID)))(state))
    assert re.findall(r"length=\d+", jaxpr).count(f"length={DEPTH}") == 1, "one scan over the blocks"
    assert re.search(r"scan\[.*(checkpoint|remat2)\[", jaxpr, re.S), "remat inside it"
    if fam == "qwen2_5_vl":  # the windowed blocks matter: all blocks full attention gives other values
        full = nnx.eval_shape(
            lambda: VisionTower(scanned.config.replace(fullatt_block_indexes=(0, 1, 2), **rt), nnx.Rngs(0))
        )
        nnx.update(full, nnx.state(scanned.visual))
        (_, out_full), _ = f(full, pixels, w)
        assert np.abs(np.asarray(out_full) - np.asarray(out_u)).max() > 100 * SAME


def test_logits_equal_transformers_and_the_unrolled_model(models):
    """A checkpoint transformers wrote, loaded into the stacked blocks: transformers' logits."""
    fam, path, tmodel, unrolled, scanned = models
    b = tm.make_batch(IMG_ROWS, pad_side="left", seed=1)
    fwd = nnx.jit(lambda m, x, a, pv, g: m(x, a, pv, g))
    got = np.asarray(fwd(scanned, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))
    m = b["attention_mask"].astype(bool)
    ref = tm.torch_forward(tmodel, b).logits.numpy()
    assert np.abs(got - ref)[m].max() <= TOL
    want = np.asarray(fwd(unrolled, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))
    assert np.abs(got - want)[m].max() <= SAME


def test_export_round_trips_to_the_same_safetensors(models, tmp_path):
    """save_pretrained of the scanned model: the unrolled model's export, key for key, and the
    transformers file; reloaded stacked (also with the decoder stacked) the same weights."""
    fam, path, tmodel, unrolled, scanned = models
    save_pretrained(scanned, tmp_path / "scanned")
    save_pretrained(unrolled, tmp_path / "unrolled")
    got = load_file(f"{tmp_path}/scanned/model.safetensors")
    want, hub = load_file(f"{tmp_path}/unrolled/model.safetensors"), load_file(f"{path}/model.safetensors")
    assert sorted(got) == sorted(want) == sorted(hub) and f"visual.blocks.{DEPTH - 1}.attn.qkv.weight" in got
    assert "visual.blocks.attn.qkv.weight" not in got
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        np.testing.assert_array_equal(got[k], hub[k], err_msg=k)
    again = load_pretrained(tmp_path / "scanned", scan_vision=True, scan_layers=True)
    assert again.config.scan_vision and again.config.scan_layers
    _assert_stacked_equal(_blocks(again), _blocks(unrolled), 0, "reloaded")
    np.testing.assert_array_equal(
        np.asarray(again.model.layers.self_attn.q_proj.bias.get_value()[1]),
        np.asarray(unrolled.model.layers[1].self_attn.q_proj.bias.get_value()),
    )


def test_decay_mask_does_not_count_the_block_axis(models):
    fam, path, tmodel, unrolled, scanned = models

    def masks(model):
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        flat = jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]
        return {re.sub(r"blocks\.\d+\.", "blocks.", ".".join(str(k.key) for k in p)): m for p, m in flat}

    got, want = masks(scanned), masks(unrolled)
    assert got == want
    assert got["visual.blocks.attn.qkv.kernel"] and not got["visual.blocks.attn.qkv.bias"]
    assert not got["visual.blocks.norm1.weight"] and got["visual.merger.mlp_0.kernel"]
    tree = {
        "visual": {
            "blocks": {"attn": {"kernel": jnp.zeros((3, 4, 5))}, "norm1": {"weight": jnp.zeros((3, 4))}},
            "patch_embed": {"kernel": jnp.zeros((4, 5))},
        }
    }
    assert jax.tree.leaves(optim.decay_mask(tree)) == [True, False, True]


def test_a_sharded_tower_gives_the_same_values(models, pixels):
    """The scanned model loaded onto 8 devices (fsdp 8; the patches split per block by the stream
    constraint inside the scan), banded in pieces: the one-device unrolled tower's output and
    gradients."""
    fam, path, tmodel, unrolled, scanned = models
    rt = VARIANTS["pieces"]
    mesh = sharding.make_mesh((1, 8, 1))
    placed = load_pretrained(path, mesh=mesh, scan_vision=True, **rt, **RT)
    assert placed.activation_mesh is mesh
    assert len(placed.visual.blocks.attn.qkv.kernel.get_value().sharding.device_set) == 8
    w = _weights()
    (_, out_u), g_u = _value_and_grad()(_tower(unrolled, **rt), pixels, w)
    (_, out_s), g_s = _value_and_grad(mesh)(placed.visual, pixels, w)
    np.testing.assert_allclose(np.asarray(out_s), np.asarray(out_u), atol=SAME)
    g_u, g_s = nnx.to_pure_dict(g_u), nnx.to_pure_dict(g_s)
    scale = max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_u))
    _assert_stacked_equal(g_s.pop("blocks"), g_u.pop("blocks"), 1e-5 * scale, "sharded grads")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale), g_s, g_u)


def test_the_config_key_is_checked_and_reaches_the_model():
    from grlhfv_jax import models as M
    from grlhfv_jax.config import ConfigError, sections
    from test_config_schema import demo

    assert sections.MODEL["scan_vision"].default is False
    config = demo()
    with config.unlocked():
        config.model.grm["scan_vision"] = "yes"
    with pytest.raises(ConfigError, match=r"^config\.model\.grm\.scan_vision = 'yes': expected bool"):
        config_schema.validate(config)
    config = demo()
    with config.unlocked():
        config.model.grm["scan_vision"] = True
    rt = roles.runtime(config_schema.validate(config).model.grm)  # what the stages pass to from_config
    assert rt["scan_vision"] is True
    assert roles.runtime(config_schema.typed_section(sections.MODEL, dict(hf_config={})))["scan_vision"] is False
    model = nnx.eval_shape(lambda: M.from_config(tm.tiny_hf_config("qwen2_5_vl").to_dict(), **rt))
    assert model.config.scan_vision and not isinstance(model.visual.blocks, nnx.List)
    assert model.visual.blocks.mlp.gate_proj.kernel.get_value().shape[0] == 3


def test_a_freeze_prefix_that_names_no_parameter_is_an_error(models):
    """`freeze` prefixes are checked against the model: one block of a scanned tower (stacked, no
    `visual.blocks.1`) or a typo would otherwise leave those parameters training."""
    from grlhfv_jax.trainers import loop

    _, _, _, unrolled, scanned = models
    loop.check_freeze(unrolled, ("visual", "visual.blocks.1"))
    loop.check_freeze(scanned, ("visual.blocks", "model.layers.0"))
    with pytest.raises(ValueError, match=r"freeze: 'visual\.blocks\.1' names no parameter .*stacked"):
        loop.check_freeze(scanned, ("visual.blocks.1",))
    with pytest.raises(ValueError, match=r"freeze: 'visoin' names no parameter"):
        loop.check_freeze(unrolled, ("visoin",))
