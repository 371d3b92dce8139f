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


__all__ = ["MODEL_TYPES", "LlavaConfig", "parse_hf_config", "parse_config", "build", "Llava", "LlavaImages",
           "from_config",
           "rope_index", "decode_position_ids", "default_position_ids", "HUB_ALIASES", "hub_key", "hub_shape",
           "with_special_ids", "CHAT_TEMPLATE", "IMAGE_TOKEN", "LlavaPrompts", "chat_prompt", "encode_prompt",
           "expand_image_tokens",
           "image_processor", "preprocess_images"]
