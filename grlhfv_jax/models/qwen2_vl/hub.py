"""Qwen2-VL / Qwen2.5-VL parameter names and shapes on the hub (`models.weights` reads and writes
with these). The NNX parameter path mirrors the hub key: `kernel` (our [in, out]) <-> `weight`
([out, in]; the patch embedding's is HF's Conv3d weight [E, C, t, p, p] flattened),
`merger.mlp_0` <-> `merger.mlp.0`, `score_head` <-> `score`. Everything else is the same name.
"""

from __future__ import annotations

import re

# the path of the decoder layers stacked [L, ...] with VLConfig.scan_layers (hub: model.layers.{i}.*)
STACKED_LAYERS = ("model", "layers")
# the path of the vision blocks stacked [depth, ...] with VLConfig.scan_vision (hub: visual.blocks.{i}.*)
STACKED_VISION = ("visual", "blocks")

# transformers' state_dict names -> the hub's
HUB_ALIASES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def hub_key(path) -> str:
    """The hub tensor name of the parameter at NNX `path` (a tuple of names / indices)."""
    key = ".".join(str(p) for p in path)
    key = key.replace("merger.mlp_0.", "merger.mlp.0.").replace("merger.mlp_2.", "merger.mlp.2.")
    key = re.sub(r"^score_head\.", "score.", key)
    return re.sub(r"\.kernel$", ".weight", key)


def hub_shape(key: str, shape, is_kernel: bool, cfg) -> tuple:
    """The shape on disk of tensor `key` whose NNX value has `shape`."""
    if not is_kernel:
        return tuple(shape)
    if key == "visual.patch_embed.proj.weight":
        return (shape[1], cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
    return (shape[1], shape[0])
