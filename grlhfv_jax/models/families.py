"""Model families: `model_type` (config.json) -> the folder that implements it.

A family folder (`models/<family>/`) exports, from its `__init__`:
- ``MODEL_TYPES``: the config.json model types it reads;
- ``parse_config(hf: dict, **runtime) -> config`` and ``build(config, *, rngs, scalar_head) -> nnx.Module``
  (the model contract of docs/internal_api.md);
- the hub mapping `models.weights` uses: ``hub_key(nnx path) -> hub tensor name``,
  ``hub_shape(key, our shape, is_kernel, config) -> shape on disk``, ``HUB_ALIASES`` (other
  spellings of hub names, e.g. transformers' state_dict names), and optionally ``STACKED_LAYERS``
  (the NNX path of layers stored stacked [L, ...] when ``config.scan_layers``; hub keys per layer)
  and ``STACKED_VISION`` (the same for the vision blocks when ``config.scan_vision``);
- ``prompt_format(hf: dict) -> models.contract.PromptFormat`` (chat examples, special tokens: the codec's);
and its model class follows ``models.contract.VLModel`` (positions, image bookkeeping, cache, capabilities).
A second family is one new folder and one line in `FAMILIES`.
"""

from __future__ import annotations

import importlib

from .errors import UnsupportedModelError

FAMILIES = {"qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "llava": "llava"}  # model_type -> folder
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def family(model_type):
    """The family module for `model_type`, or UnsupportedModelError naming the supported ones."""
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported model_type {model_type!r}; supported families: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return importlib.import_module(f"grlhfv_jax.models.{FAMILIES[model_type]}")
