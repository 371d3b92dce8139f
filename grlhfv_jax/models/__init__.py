"""Model families (Flax NNX) and Hugging Face checkpoint I/O. See docs/models.md.
One folder per family (`qwen2_vl/`, `llava/`), chosen by config.json's model_type (`families.py`)."""

from . import contract
from .families import SUPPORTED_MODEL_TYPES, UnsupportedModelError, family
from .llava import Llava, LlavaConfig
from .qwen2_vl import Qwen2VL, VLConfig, decode_position_ids, parse_hf_config, rope_index
from .weights import CheckpointError, load_pretrained, read_config_json, save_pretrained


def from_config(config, **kwargs):
    """A randomly initialised model of the family of `config` (an HF config dict or a family's
    config object); keywords as the family's `from_config` (rngs, dtype, param_dtype, remat, ...)."""
    model_type = config.get("model_type") if isinstance(config, dict) else config.model_type
    return family(model_type).from_config(config, **kwargs)


__all__ = [
    "contract",
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedModelError",
    "family",
    "VLConfig",
    "parse_hf_config",
    "Qwen2VL",
    "from_config",
    "rope_index",
    "decode_position_ids",
    "CheckpointError",
    "load_pretrained",
    "read_config_json",
    "save_pretrained",
    "Llava",
    "LlavaConfig",
]
