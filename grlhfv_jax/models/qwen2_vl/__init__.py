"""The Qwen2-VL / Qwen2.5-VL family (docs/models.md): config, model, vision tower, M-RoPE, hub names.
The family interface `models.families` documents."""

from .config import MODEL_TYPES, VLConfig, parse_hf_config, with_special_ids
from .hub import HUB_ALIASES, STACKED_LAYERS, STACKED_VISION, hub_key, hub_shape
from .model import Qwen2VL, QwenImages, from_config
from .rope import decode_position_ids, rope_index

parse_config = parse_hf_config


def build(cfg, *, rngs, scalar_head: bool = False):
    return Qwen2VL(cfg, rngs=rngs, scalar_head=scalar_head)


def prompt_format(hf: dict):
    """The family's prompt format (`models.contract.PromptFormat`) for an HF config dict."""
    from .prompts import QwenPrompts

    return QwenPrompts()


__all__ = [
    "MODEL_TYPES",
    "VLConfig",
    "parse_hf_config",
    "parse_config",
    "build",
    "prompt_format",
    "Qwen2VL",
    "QwenImages",
    "from_config",
    "rope_index",
    "decode_position_ids",
    "HUB_ALIASES",
    "STACKED_LAYERS",
    "STACKED_VISION",
    "hub_key",
    "hub_shape",
    "with_special_ids",
]
