"""The LLaVA-1.5 family (docs/models.md): CLIP vision tower, mlp2x_gelu projector, Llama decoder;
hub names of LlavaForConditionalGeneration; prompt encoding with LLaVA's image tokens and chat
template. The family interface `models.families` documents."""

from .config import MODEL_TYPES, LlavaConfig, parse_hf_config, with_special_ids
from .hub import HUB_ALIASES, hub_key, hub_shape
from .model import (
    Llava,
    LlavaImages,
    decode_position_ids,
    default_position_ids,
    from_config,
    rope_index,
)
from .processing import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    LlavaPrompts,
    chat_prompt,
    encode_prompt,
    expand_image_tokens,
    image_processor,
    preprocess_images,
)

parse_config = parse_hf_config


def build(cfg, *, rngs, scalar_head: bool = False):
    return Llava(cfg, rngs=rngs, scalar_head=scalar_head)


def prompt_format(hf: dict) -> LlavaPrompts:
    """The family's prompt format (`models.contract.PromptFormat`) for an HF config dict (its image size
    and tokens per image)."""
    return LlavaPrompts(parse_hf_config(hf))


__all__ = [
    "MODEL_TYPES",
    "LlavaConfig",
    "parse_hf_config",
    "parse_config",
    "build",
    "prompt_format",
    "Llava",
    "LlavaImages",
    "from_config",
    "rope_index",
    "decode_position_ids",
    "default_position_ids",
    "HUB_ALIASES",
    "hub_key",
    "hub_shape",
    "with_special_ids",
    "CHAT_TEMPLATE",
    "IMAGE_TOKEN",
    "LlavaPrompts",
    "chat_prompt",
    "encode_prompt",
    "expand_image_tokens",
    "image_processor",
    "preprocess_images",
]
