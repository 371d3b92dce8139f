"""LLaVA's vision side in Flax NNX: the CLIP vision tower (`CLIPVisionTower`, transformers'
CLIPVisionModel) and the mlp2x_gelu projector, joined in `LlavaVision` (the model's ``visual``).

Module and parameter names follow the hub (`vision_tower.encoder.layers.0.self_attn.q_proj`,
`multi_modal_projector.linear_1`), so hub.py maps names mechanically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..layers import Dense, LayerNorm, activation, attention, remat


def _normal(rngs, shape, dtype):
    return (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class CLIPEmbeddings(nnx.Module):
    """Patch embedding (HF's Conv2d [E, C, p, p] without bias, as a kernel [C*p*p, E]), a CLS
    embedding [E] in front, learned absolute positions [1 + patches, E]."""

    def __init__(self, cfg, rngs):
        E, P = cfg.vision_hidden_size, cfg.patch_size
        self.cfg = cfg
        self.patch_embedding = Dense(
            cfg.in_channels * P * P,
            E,
            axes=("vision_patch", "vision_embed"),
            bias=False,
            rngs=rngs,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
        )
        self.class_embedding = nnx.Param(_normal(rngs, (E,), cfg.param_dtype), logical_axes=("vision_embed",))
        self.position_embedding = _PositionTable(cfg.num_patches + 1, E, cfg, rngs)

    def __call__(self, pixel_values):
        """pixel_values [n, C, S, S] -> [n, 1 + patches, E] in the compute dtype."""
        c = self.cfg
        n, C, S, S2 = pixel_values.shape
        if (C, S, S2) != c.pixel_shape:
            raise ValueError(
                f"pixel_values must be [n, {', '.join(map(str, c.pixel_shape))}], got {pixel_values.shape}"
            )
        g, p = c.grid_size, c.patch_size
        x = pixel_values.reshape(n, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g * g, C * p * p)
        patches = self.patch_embedding(x)  # [n, g*g, E]
        cls = jnp.broadcast_to(self.class_embedding[...].astype(c.dtype), (n, 1, patches.shape[-1]))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding.weight[...].astype(c.dtype)[None]


class _PositionTable(nnx.Module):
    """CLIP's learned positions ``weight [1 + patches, E]`` (hub: embeddings.position_embedding.weight)."""

    def __init__(self, n, E, cfg, rngs):
        self.weight = nnx.Param(_normal(rngs, (n, E), cfg.param_dtype), logical_axes=(None, "vision_embed"))


class CLIPAttention(nnx.Module):
    def __init__(self, cfg, rngs):
        E = cfg.vision_hidden_size
        kw = dict(bias=True, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.heads, self.dtype = cfg.vision_num_heads, cfg.dtype
        self.q_proj = Dense(E, E, axes=("vision_embed", "vision_heads"), **kw)
        self.k_proj = Dense(E, E, axes=("vision_embed", "vision_heads"), **kw)
        self.v_proj = Dense(E, E, axes=("vision_embed", "vision_heads"), **kw)
        self.out_proj = Dense(E, E, axes=("vision_heads", "vision_embed"), **kw)

    def __call__(self, x):
        """x [n, S, E] -> [n, S, E]: full (bidirectional) attention within each image."""
        n, S, E = x.shape
        split = lambda t: t.reshape(n, S, self.heads, E // self.heads)  # noqa: E731
        mask = jnp.ones((n, S, S), bool)
        o = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), mask, self.dtype)
        return self.out_proj(o.reshape(n, S, E))


class CLIPMLP(nnx.Module):
    def __init__(self, cfg, rngs):
        E, I = cfg.vision_hidden_size, cfg.vision_intermediate_size
        kw = dict(bias=True, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.act = activation(cfg.vision_hidden_act)
        self.fc1 = Dense(E, I, axes=("vision_embed", "vision_mlp"), **kw)
        self.fc2 = Dense(I, E, axes=("vision_mlp", "vision_embed"), **kw)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg, rngs):
        kw = dict(eps=cfg.vision_layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.self_attn = CLIPAttention(cfg, rngs)
        self.layer_norm1 = LayerNorm(cfg.vision_hidden_size, **kw)
        self.mlp = CLIPMLP(cfg, rngs)
        self.layer_norm2 = LayerNorm(cfg.vision_hidden_size, **kw)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg, rngs):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs) for _ in range(cfg.vision_depth)])


def _block_call(block, x):
    return block(x)


class CLIPVisionTower(nnx.Module):
    """transformers' CLIPVisionModel: embeddings -> pre_layrnorm -> encoder layers (-> post_layernorm
    on the CLS token, held for the checkpoint but unused by LLaVA)."""

    def __init__(self, cfg, rngs):
        kw = dict(eps=cfg.vision_layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.cfg = cfg
        self.embeddings = CLIPEmbeddings(cfg, rngs)
        self.pre_layrnorm = LayerNorm(cfg.vision_hidden_size, **kw)
        self.encoder = CLIPEncoder(cfg, rngs)
        self.post_layernorm = LayerNorm(cfg.vision_hidden_size, **kw)

    def hidden_states(self, pixel_values, indices):
        """The tower's hidden states at `indices` (transformers' ``hidden_states`` tuple: 0 = the
        embeddings after pre_layrnorm, i = the output of layer i; negative counts from the end, -1 =
        the last layer's output). Only the layers up to the deepest one asked for run.
        pixel_values [n, C, S, S] -> list of [n, 1 + patches, E]."""
        depth = len(self.encoder.layers)
        want = [i % (depth + 1) for i in indices]
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        states = [x]
        call = remat(_block_call, self.cfg)
        for layer in list(self.encoder.layers)[: max(want)]:
            x = call(layer, x)
            states.append(x)
        return [states[i] for i in want]


class LlavaProjector(nnx.Module):
    """mlp2x_gelu: linear_2(act(linear_1(features))); features [..., E * len(feature layers)] -> [..., H]."""

    def __init__(self, cfg, rngs):
        kw = dict(bias=cfg.projector_bias, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        E = cfg.vision_hidden_size * len(cfg.vision_feature_layer)
        self.act = activation(cfg.projector_hidden_act)
        self.linear_1 = Dense(E, cfg.hidden_size, axes=("vision_embed", "mlp"), **kw)
        self.linear_2 = Dense(cfg.hidden_size, cfg.hidden_size, axes=("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaVision(nnx.Module):
    """The vision side of LLaVA (the model's ``visual``, as Qwen2VL's): the CLIP tower and the projector.
    ``visual(pixel_values)`` -> image embeddings [n * image_tokens, hidden], images in order."""

    def __init__(self, cfg, rngs):
        self.cfg = cfg
        self.vision_tower = CLIPVisionTower(cfg, rngs)
        self.multi_modal_projector = LlavaProjector(cfg, rngs)

    def features(self, pixel_values):
        """The selected tower features [n, image_tokens, E * len(vision_feature_layer)]: hidden
        states `vision_feature_layer` (concatenated on the last axis), CLS dropped with "default"."""
        hs = self.vision_tower.hidden_states(pixel_values, self.cfg.vision_feature_layer)
        if self.cfg.vision_feature_select_strategy == "default":
            hs = [h[:, 1:] for h in hs]
        return jnp.concatenate(hs, axis=-1)

    def __call__(self, pixel_values, image_grid_thw=None):
        """pixel_values [n, C, S, S] -> [n * image_tokens, hidden] (compute dtype). image_grid_thw is
        ignored (every LLaVA image has one fixed grid); accepted so callers of Qwen2VL.visual work."""
        pixel_values = jnp.asarray(pixel_values)
        out = self.multi_modal_projector(self.features(pixel_values))
        return out.reshape(-1, out.shape[-1])
