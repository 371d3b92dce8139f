"""Small NNX building blocks with explicit parameter / compute dtypes and logical-axis metadata."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NEG_INF = -1e30  # finite mask value: a fully masked row stays finite (no NaN from 0 * inf)

# What a rematerialised block keeps from its forward pass for the backward pass (the rest is
# recomputed): "nothing" (only the block's inputs: least memory, one more forward), "dots" (also
# the outputs of matmuls without batch dimensions: the q/k/v/o and MLP projections; attention
# scores and elementwise ops are recomputed), "dots_all" (every matmul output, attention scores too).
REMAT_POLICIES = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.dots_saveable,
}


def remat(f, config, *, static_argnums=()):
    """``f(module, *args)`` under `jax.checkpoint` with ``config.remat_policy`` when ``config.remat``,
    else `f` itself. The module goes in as its split state and is merged inside (its forward
    writes no variables), so the call also works inside jax's own transforms (vmap, scan, a while
    loop, eval_shape) on a module from outside them: `nnx.remat` writes the variables back, which
    NNX refuses across trace levels (TraceContextError). static_argnums count the module as 0."""
    if not config.remat:
        return f
    name = getattr(config, "remat_policy", "nothing")
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat_policy {name!r}: expected one of {sorted(REMAT_POLICIES)}")

    def call(module, *args):
        graphdef, state = nnx.split(module)
        pure = lambda state, *a: f(nnx.merge(graphdef, state, copy=True), *a)  # noqa: E731
        return jax.checkpoint(pure, policy=REMAT_POLICIES[name], static_argnums=static_argnums)(state, *args)

    return call


def stack_layers(layers):
    """One module holding the parameters of `layers` (equal modules) stacked on a new leading
    layer axis, logical name "layers" (replicated: sharding.LOGICAL_RULES): kernel [L, in, out],
    bias / norm weight [L, dim]. The decoder layers (VLConfig.scan_layers) and the vision
    tower's blocks (VLConfig.scan_vision)."""
    graphdef, _ = nnx.split(layers[0])
    stacked = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(m) for m in layers]))
    for _, v in nnx.iter_graph(stacked):
        if isinstance(v, nnx.Variable):
            axes = v.get_metadata().get("logical_axes") or (None,) * (v.get_value().ndim - 1)
            v.set_metadata("logical_axes", ("layers",) + tuple(axes))
    return stacked


def _normal(rngs, shape, std, dtype):
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Dense(nnx.Module):
    """y = x @ kernel (+ bias). kernel [in, out] (HF's weight transposed)."""

    def __init__(self, d_in, d_out, *, axes, bias, rngs, dtype, param_dtype, std=0.02):
        self.dtype = dtype
        self.kernel = nnx.Param(_normal(rngs, (d_in, d_out), std, param_dtype), logical_axes=tuple(axes))
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype), logical_axes=(axes[1],)) if bias else None

    def __call__(self, x):
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """weight * x / rms(x), normalised in float32 and cast back (as transformers)."""

    def __init__(self, dim, *, eps, dtype, param_dtype):
        self.eps, self.dtype = eps, dtype
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...].astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim, *, eps, dtype, param_dtype):
        self.eps, self.dtype = eps, dtype
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("norm",))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mu = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
        y = (x32 - mu) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Embed(nnx.Module):
    def __init__(self, vocab, dim, *, rngs, dtype, param_dtype, std=0.02):
        self.dtype = dtype
        self.weight = nnx.Param(_normal(rngs, (vocab, dim), std, param_dtype), logical_axes=("vocab", "embed"))

    def __call__(self, ids):
        return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)


def activation(name):
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "silu":
        return jax.nn.silu
    if name in ("gelu", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=name != "gelu")
    raise ValueError(f"unsupported activation {name!r}")


def attention(q, k, v, mask, dtype, *, cache_layout=False):
    """Grouped-query attention. q [B, T, Hq, D], k/v [B, S, Hkv, D], mask [B, T, S] bool
    -> [B, T, Hq, D]. Scores and softmax in float32.

    cache_layout: k [B, Hkv, S, D] and v [B, Hkv, D, S] (the KV cache's layout): every dot then
    contracts the last axis of the cache, which the CPU GEMM kernels (YNNPACK) take as stored; with
    [B, S, Hkv, D] XLA transposed the whole cache of every layer in each decode step.
    For T > 1 (prefill, training) q, k and v are put head-major explicitly first: XLA's own
    choice of operand layouts ran these batched dots ~30% slower on CPU (measured, docs/performance.md).
    """
    B, T, Hq, D = q.shape
    Hkv = k.shape[1 if cache_layout else 2]
    g = Hq // Hkv
    if T == 1:  # decode: no transposes at all
        k_in, v_in = ("bksd", "bkds") if cache_layout else ("bskd", "bskd")
        qg = q.reshape(B, T, Hkv, g, D)
        s = jnp.einsum(f"btkgd,{k_in}->bkgts", qg, k, preferred_element_type=jnp.float32) * (D**-0.5)
        s = jnp.where(mask[:, None, None], s, NEG_INF)
        p = jax.nn.softmax(s, axis=-1).astype(dtype)
        return jnp.einsum(f"bkgts,{v_in}->btkgd", p, v).reshape(B, T, Hq, D)
    if not cache_layout:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 3, 1)  # [B, Hkv, S, D], [B, Hkv, D, S]
    qg = q.reshape(B, T, Hkv, g, D).transpose(0, 2, 3, 1, 4)  # [B, Hkv, g, T, D]
    s = jnp.einsum("bkgtd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32) * (D**-0.5)
    s = jnp.where(mask[:, None, None], s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1).astype(dtype)
    o = jnp.einsum("bkgts,bkds->bkgtd", p, v)
    return o.transpose(0, 3, 1, 2, 4).reshape(B, T, Hq, D)
