"""sharding.py: mesh construction, logical rules -> specs, placement, and sharded == unsharded numbers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from grlhfv_jax import sharding as S


def test_make_mesh_shapes_and_errors():
    assert jax.device_count() == 8
    m = S.make_mesh((2, -1, 1))
    assert dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    assert dict(S.make_mesh().shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(S.make_mesh((1, 2, 4)).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        S.make_mesh((3, -1, 1))
    with pytest.raises(ValueError, match="needs 4 devices but 8 are available"):
        S.make_mesh((2, 2, 1))
    with pytest.raises(ValueError, match="at most one -1"):
        S.make_mesh((-1, -1, 1))
    with pytest.raises(ValueError, match="has 2 entries"):
        S.make_mesh((2, 4))


def test_logical_to_spec_rules():
    mesh = S.make_mesh((1, 2, 4))
    spec = lambda axes, shape: S.logical_to_spec(axes, shape, mesh)  # noqa: E731
    assert spec(("embed", "mlp"), (4, 8)) == P("fsdp", "tensor")
    assert spec(("mlp", "embed"), (8, 4)) == P("tensor", "fsdp")
    assert spec(("embed", "mlp"), (3, 8)) == P(None, "tensor")  # 3 % fsdp(2) != 0 -> replicated
    assert spec(("vocab", "embed"), (6, 4)) == P(None, "fsdp")  # 6 % tensor(4) != 0
    assert spec(("embed", "q_heads", "head_dim"), (4, 4, 16)) == P("fsdp", "tensor")
    assert spec(("embed", "vision_embed"), (4, 4)) == P("fsdp")  # an axis is used once
    assert spec(("norm",), (4,)) == P()
    assert spec((None, None), (4, 8)) == P()
    assert spec(None, (4, 8)) == P()
    with pytest.raises(ValueError, match="2 names for an array of shape \\(4,\\)"):
        spec(("embed", "mlp"), (4,))
    with pytest.raises(ValueError, match="unknown logical axis name 'hidden'"):
        spec(("hidden",), (4,))
    dp = S.make_mesh((8, 1, 1))  # pure data parallel: every parameter replicated
    for name in S.LOGICAL_RULES:
        assert S.logical_to_spec((name,), (8,), dp) == P()
    # every logical name of internal_api.md has a rule
    assert set(S.LOGICAL_RULES) == {
        "vocab",
        "embed",
        "mlp",
        "q_heads",
        "kv_heads",
        "head_dim",
        "vision_embed",
        "vision_mlp",
        "vision_heads",
        "vision_patch",
        "norm",
        "layers",
    }
    assert spec(("layers", "embed", "mlp"), (3, 4, 8)) == P(None, "fsdp", "tensor")  # scan_layers: stacked


class ToyMLP(nnx.Module):
    """Embedding -> MLP -> tied-free vocab head, with logical_axes metadata."""

    def __init__(self, vocab=12, embed=8, mlp=16, *, rngs):
        k = jax.random.split(rngs.params(), 3)
        self.embedding = nnx.Param(jax.random.normal(k[0], (vocab, embed)), logical_axes=("vocab", "embed"))
        self.up = nnx.Param(jax.random.normal(k[1], (embed, mlp)) / 3, logical_axes=("embed", "mlp"))
        self.down = nnx.Param(jax.random.normal(k[2], (mlp, embed)) / 4, logical_axes=("mlp", "embed"))
        self.norm = nnx.Param(jnp.ones((embed,)), logical_axes=("norm",))
        self.head = nnx.Param(jnp.zeros((embed, vocab)) + 0.01, logical_axes=("embed", "vocab"))
        self.steps = nnx.BatchStat(jnp.zeros((), jnp.int32))  # no metadata -> replicated

    def __call__(self, ids):
        x = self.embedding[...][ids]
        x = x + jax.nn.gelu(x @ self.up[...]) @ self.down[...]
        x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-6) * self.norm[...]
        return x @ self.head[...]


def test_shard_model_places_each_param():
    mesh = S.make_mesh((1, 2, 4))
    model = S.shard_model(ToyMLP(rngs=nnx.Rngs(0)), mesh)
    expect = {
        "embedding": (P("tensor", "fsdp"), (3, 4)),
        "up": (P("fsdp", "tensor"), (4, 4)),
        "down": (P("tensor", "fsdp"), (4, 4)),
        "norm": (P(), (8,)),
        "head": (P("fsdp", "tensor"), (4, 3)),
        "steps": (P(), ()),
    }
    shardings = S.model_shardings(model, mesh)
    for name, (spec, shard_shape) in expect.items():
        arr = getattr(model, name)[...]
        assert arr.sharding.spec == spec, name
        assert arr.addressable_shards[0].data.shape == shard_shape, name
        assert shardings[name].get_value().spec == spec
    # optimizer moments follow their parameters
    opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    S.shard_model(opt, mesh)
    assert opt.opt_state[0].mu["up"][...].sharding.spec == P("fsdp", "tensor")


def test_shard_batch():
    mesh = S.make_mesh((2, 2, 2))
    rng = np.random.RandomState(0)
    batch = {
        "input_ids": rng.randint(0, 9, (8, 5)).astype(np.int32),
        "attention_mask": np.ones((8, 5), np.int32),
        "pixel_values": rng.randn(13, 6).astype(np.float32),
        "image_grid_thw": np.asarray([[1, 2, 2]] * 3),
        "temperature": np.float32(0.7),
        "texts": ["a"] * 8,
    }
    out = S.shard_batch(batch, mesh)
    assert out["input_ids"].sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in out["input_ids"].addressable_shards} == {(2, 5)}
    for k in ("pixel_values", "image_grid_thw", "temperature"):
        assert out[k].sharding.spec == P(), k
        assert out[k].sharding.is_fully_replicated
    for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        np.testing.assert_array_equal(np.asarray(out[k]), batch[k])
    assert out["texts"] is batch["texts"]
    with pytest.raises(ValueError, match="'input_ids' has 6 rows .* not divisible by the 4 devices"):
        S.shard_batch({"input_ids": np.zeros((6, 3), np.int32)}, mesh)
    # tensor-only mesh: the batch is replicated
    assert S.shard_batch({"x": np.zeros((3, 2))}, S.make_mesh((1, 1, 8)))["x"].sharding.spec == P()


def test_process_slice_and_single_process_init(monkeypatch):
    assert S.process_slice(10, 0, 2) == slice(0, 5) and S.process_slice(10, 1, 2) == slice(5, 10)
    assert S.process_slice(8) == slice(0, 8)
    with pytest.raises(ValueError, match="do not split evenly over 3"):
        S.process_slice(10, 0, 3)
    for k in (
        "JAX_COORDINATOR_ADDRESS",
        "COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(k, raising=False)
    assert S.initialize_distributed() == (0, 1)
    assert not jax.distributed.is_initialized()


def _toy_loss(model, ids, mask):
    """Next-token cross entropy, mean over masked targets."""
    logits = model(ids[:, :-1])
    logp = jax.nn.log_softmax(logits, -1)
    tgt = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    m = mask[:, 1:].astype(jnp.float32)
    return -(tgt * m).sum() / m.sum()


@nnx.jit
def _toy_step(opt, model, ids, mask):
    loss, grads = nnx.value_and_grad(_toy_loss)(model, ids, mask)
    opt.update(model, grads)
    return loss


TOY_IDS = np.random.RandomState(1).randint(0, 12, (8, 6)).astype(np.int32)
TOY_MASK = (np.random.RandomState(2).rand(8, 6) > 0.2).astype(np.int32)


def _toy_run(mesh):
    """Two SGD steps of the toy model; on one device when mesh is None."""
    model = ToyMLP(rngs=nnx.Rngs(0))
    if mesh is None:
        b = {"ids": jnp.asarray(TOY_IDS), "mask": jnp.asarray(TOY_MASK)}
    else:
        S.shard_model(model, mesh)
        b = S.shard_batch({"ids": TOY_IDS, "mask": TOY_MASK}, mesh)
    # plain SGD: Adam's g / sqrt(v) would amplify float rounding in near-zero gradients
    opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    losses = [float(_toy_step(opt, model, b["ids"], b["mask"])) for _ in range(2)]
    return losses, {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}, model


@pytest.fixture(scope="module")
def toy_reference():
    return _toy_run(None)


@pytest.mark.parametrize("mesh_shape", [(1, 2, 4)])  # the tiny Qwen2-VL test below covers the others
def test_toy_sharded_train_step_matches_one_device(mesh_shape, toy_reference):
    ref_losses, ref_params, _ = toy_reference
    losses, params, model = _toy_run(S.make_mesh(mesh_shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for k in ref_params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-6, err_msg=str(k))
    # parameters stayed sharded through the update
    assert model.up[...].sharding.spec == P("fsdp", "tensor")
    assert model.embedding[...].sharding.spec == P("tensor", "fsdp")


# ----------------------------------------------------------------------------- two processes

_WORKER = r"""
import json, os, sys
pid, port, tests_dir, result = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_num_cpu_devices", 4)
import numpy as np
from jax.experimental import multihost_utils
sys.path.insert(0, tests_dir)
from grlhfv_jax import sharding as S
os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
assert S.initialize_distributed() == (pid, 2)  # the environment asks for it
assert S.initialize_distributed() == (pid, 2)  # idempotent
assert jax.device_count() == 8 and jax.local_device_count() == 4
import test_sharding as T
from flax import nnx
import optax

sl = S.process_slice(8)
# per-row image patches of varying count; the global pixel_values are the rows' patches in row order
counts = [1, 3, 0, 2, 2, 1, 4, 1]
pv_rows = [np.full((c, 3), 10 * r + np.arange(c)[:, None], np.float32) for r, c in enumerate(counts)]
local = {"ids": T.TOY_IDS[sl], "mask": T.TOY_MASK[sl], "pixel_values": np.concatenate(pv_rows[sl]),
         "temperature": np.float32(0.5)}
mesh = S.make_mesh((2, 2, 2))
b = S.shard_batch(local, mesh, process_local=True)
np.testing.assert_array_equal(np.asarray(b["pixel_values"]), np.concatenate(pv_rows))
np.testing.assert_array_equal(multihost_utils.process_allgather(b["ids"], tiled=True), T.TOY_IDS)
assert float(b["temperature"]) == 0.5 and b["ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))

model = S.shard_model(T.ToyMLP(rngs=nnx.Rngs(0)), mesh)
opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
losses = [float(T._toy_step(opt, model, b["ids"], b["mask"])) for _ in range(2)]
up = multihost_utils.process_allgather(model.up[...], tiled=True)
with open(result, "w") as f:  # not stdout: the collectives' C++ log lines can land inside printed lines
    json.dump({"losses": losses, "up": np.asarray(up).tolist()}, f)
"""


def test_two_process_cpu_multihost(tmp_path, toy_reference):
    """Two local processes x 4 CPU devices joined by jax.distributed: each feeds its half of the
    batch (process_local=True); the global train step equals the one-device reference."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
    tests_dir = os.path.dirname(__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(p), str(port), tests_dir, str(tmp_path / f"result{p}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(2)
    ]
    outs = []
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads((tmp_path / f"result{i}.json").read_text()))
    ref_losses, ref_params, _ = toy_reference
    for o in outs:
        np.testing.assert_allclose(o["losses"], ref_losses, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(o["up"], ref_params[("up",)], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- tiny Qwen2-VL


def _vl_loss(model, batch):
    """Next-token cross entropy over real (attention_mask) targets."""
    logits = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    logp = jax.nn.log_softmax(logits[:, :-1], -1)
    tgt = jnp.take_along_axis(logp, batch["input_ids"][:, 1:, None], -1)[..., 0]
    m = batch["attention_mask"][:, 1:].astype(jnp.float32)
    return -(tgt * m).sum() / m.sum(), logits


@nnx.jit
def _vl_forward_and_step(opt, model, batch):
    (loss, logits), grads = nnx.value_and_grad(_vl_loss, has_aux=True)(model, batch)
    opt.update(model, grads)
    return loss, logits, grads


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    """A tiny Qwen2-VL checkpoint (1 vision block, 1 decoder layer: compile time) whose head counts
    (4 q, 4 kv, 4 vision) and widths divide tensor=4, a batch of 8
    left-padded rows with images of different sizes (one row without), and the one-device reference
    of a forward pass + one SGD step."""
    import tiny_models as TM
    from grlhfv_jax import models

    path = TM.save_tiny_model(
        tmp_path_factory.mktemp("tiny_q2vl"),
        "qwen2_vl",
        text={"num_key_value_heads": 4, "num_hidden_layers": 1},
        vision={"depth": 1},
    )
    rows = [
        [[1, 5, 6], (1, 2, 2), [7, 8]],
        [[1, 9], (1, 4, 2), [10]],
        [[1, 11, 12, 13, 14]],
        [[1], (1, 2, 4), [15, 16]],
        [[1, 17], (1, 2, 2)],
        [[1, 18, 19], (1, 2, 2), [20]],
        [(1, 4, 4), [21]],
        [[1, 22, 23, 24], (1, 2, 2)],
    ]
    batch = TM.make_batch(rows, pad_side="left", seed=0)
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    batch["image_grid_thw"] = batch["image_grid_thw"].astype(np.int32)

    def run(mesh):
        model = models.load_pretrained(path)
        if mesh is None:
            b = jax.tree.map(jnp.asarray, batch)
        else:
            S.shard_model(model, mesh)
            b = S.shard_batch(batch, mesh)
        opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        loss, logits, grads = _vl_forward_and_step(opt, model, b)
        flat = lambda st: {k: np.asarray(v) for k, v in nnx.to_flat_state(st)}  # noqa: E731
        return float(loss), np.asarray(logits), flat(grads), flat(nnx.state(model, nnx.Param)), model

    return run, run(None)


# fp32 throughout; sharding only changes the order of the reductions.
VL_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (1, 2, 4)])
def test_tiny_qwen2_vl_sharded_forward_and_step_match_one_device(tiny_vl, mesh_shape):
    run, (ref_loss, ref_logits, ref_grads, ref_params, _) = tiny_vl
    mesh = S.make_mesh(mesh_shape)
    loss, logits, grads, params, model = run(mesh)
    assert np.abs(ref_logits).max() > 0.1 and np.isfinite(ref_logits).all()
    np.testing.assert_allclose(logits, ref_logits, **VL_TOL)
    np.testing.assert_allclose(loss, ref_loss, **VL_TOL)
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        np.testing.assert_allclose(grads[k], ref_grads[k], err_msg=str(k), **VL_TOL)
        # scale-aware too (vision grads are ~1e-3): measured <= 2e-6 of each tensor's max |grad|
        assert np.abs(grads[k] - ref_grads[k]).max() <= 2e-5 * np.abs(ref_grads[k]).max(), k
        np.testing.assert_allclose(params[k], ref_params[k], err_msg=str(k), **VL_TOL)
    # the parameters are really split as the rules say
    attn = model.model.layers[0].self_attn
    want = {
        (8, 1, 1): (P(), P()),
        (2, 4, 1): (P("fsdp"), P(None, "fsdp")),
        (1, 2, 4): (P("fsdp", "tensor"), P("tensor", "fsdp")),
    }[mesh_shape]
    assert (attn.q_proj.kernel[...].sharding.spec, attn.o_proj.kernel[...].sharding.spec) == want
    assert (
        model.model.embed_tokens.weight[...].sharding.spec
        == {(8, 1, 1): P(), (2, 4, 1): P(None, "fsdp"), (1, 2, 4): P("tensor", "fsdp")}[mesh_shape]
    )


def test_tiny_qwen2_vl_activations_follow_the_activation_rules(tiny_vl):
    """A sharded model constrains its residual stream and logits (sharding.ACTIVATION_RULES): on a
    2x2x2 mesh the logits leave the forward with rows over (data, fsdp) and the vocabulary over
    tensor, whatever the FSDP-sharded weights suggest; unsharded, nothing is constrained."""
    from jax.sharding import NamedSharding

    import tiny_models as TM

    run, _ = tiny_vl
    mesh = S.make_mesh((2, 2, 2))
    *_, model = run(mesh)
    assert model.activation_mesh is mesh and run(None)[-1].activation_mesh is None
    rows = TM.make_batch([[[1, 2, 3], (1, 2, 2), [4]]] * 4, pad_side="left", seed=1)
    b = S.shard_batch({k: rows[k] for k in ("input_ids", "attention_mask")}, mesh)
    fwd = nnx.jit(lambda m, ids, am, pv, g: m(ids, am, pv, g))
    logits = fwd(
        model, b["input_ids"], b["attention_mask"], rows["pixel_values"], rows["image_grid_thw"].astype(np.int32)
    )
    assert logits.shape[0] == 4 and logits.shape[-1] % 2 == 0
    want = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
    assert logits.sharding.is_equivalent_to(want, logits.ndim), logits.sharding


def test_split_axes_by_hand():
    """The axes a vision tower's patches split over: all row axes when their product divides the
    size, else the largest that does, else none; tensor never."""
    from grlhfv_jax.sharding import split_axes

    pod, host, dp = dict(data=5, fsdp=8, tensor=1), dict(data=1, fsdp=8, tensor=1), dict(data=8, fsdp=1, tensor=2)
    assert split_axes(4096, pod) == ("fsdp",)
    assert split_axes(40 * 4096, pod) == ("data", "fsdp")
    assert split_axes(25, pod) == ("data",)
    assert split_axes(7, pod) == ()
    assert split_axes(4096, host) == ("fsdp",)
    assert split_axes(16, dp) == ("data",)
    assert split_axes(3, dp) == ()
    assert split_axes(64, dict(data=1, fsdp=1, tensor=8)) == ()
