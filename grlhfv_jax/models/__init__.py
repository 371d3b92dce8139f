"""Model families (Flax NNX) and Hugging Face checkpoint I/O. See docs/models.md."""
from .config import SUPPORTED_MODEL_TYPES, UnsupportedModelError, VLConfig, parse_hf_config
from .qwen2_vl import Qwen2VL, from_config
from .rope import decode_position_ids, rope_index
from .weights import CheckpointError, load_pretrained, save_pretrained

__all__ = ["SUPPORTED_MODEL_TYPES", "UnsupportedModelError", "VLConfig", "parse_hf_config", "Qwen2VL",
           "from_config", "rope_index", "decode_position_ids", "CheckpointError", "load_pretrained",
           "save_pretrained"]
