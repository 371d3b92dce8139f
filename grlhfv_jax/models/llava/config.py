"""`LlavaConfig`: a frozen, flat view of a Hugging Face LLaVA-1.5 config.json (`model_type: llava`):
a CLIP vision tower (`vision_config`, model_type clip_vision_model), the mlp2x_gelu projector and a
Llama language model (`text_config`, model_type llama).

The hub's llava-1.5 config.json leaves many fields to transformers' defaults (its `text_config`
holds little more than the vocabulary size); those defaults are written out here, as transformers
applies them: a missing field of a given `vision_config` takes CLIPVisionConfig's default
(`CLIP_DEFAULTS`), a missing `vision_config` is LlavaConfig's CLIP ViT-L/14-336 (`VISION_DEFAULTS`),
missing text fields take LlamaConfig's (`TEXT_DEFAULTS`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax.numpy as jnp

from ..errors import UnsupportedModelError

MODEL_TYPES = ("llava",)

# CLIPVisionConfig's defaults (ViT-B/32), for the fields a given vision_config leaves out
CLIP_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# LlavaConfig's vision config when config.json has none (CLIP ViT-L/14 at 336 px)
VISION_DEFAULTS = dict(
    CLIP_DEFAULTS,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)
# LlamaConfig's defaults (Llama-2-7B shapes)
TEXT_DEFAULTS = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    model_type: str
    # language model (Llama)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    # special tokens
    image_token_id: int
    bos_token_id: Any
    eos_token_id: Any
    pad_token_id: Any
    # vision tower (CLIP)
    vision_depth: int
    vision_hidden_size: int
    vision_num_heads: int
    vision_intermediate_size: int
    vision_hidden_act: str
    vision_layer_norm_eps: float
    image_size: int
    patch_size: int
    in_channels: int
    # projector and feature selection
    vision_feature_layer: tuple[int, ...]  # hidden-state indices of the tower (-2: input of the last layer)
    vision_feature_select_strategy: str  # "default" (drop CLS) | "full"
    projector_hidden_act: str
    projector_bias: bool
    # runtime choices (not from config.json); the names and meanings of qwen2_vl.VLConfig's
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    remat_policy: str = "nothing"
    logits_chunk: int = 0
    vision_block: int = 0  # unused: every image is one fixed-size frame, attended as such
    vision_chunk: int = 0  # unused
    scan_layers: bool = False  # not implemented for LLaVA (rejected by the model)
    scan_vision: bool = False  # not implemented for LLaVA (rejected by the model)
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def vision_head_dim(self) -> int:
        return self.vision_hidden_size // self.vision_num_heads

    @property
    def grid_size(self) -> int:
        """Patches per side of an image: image_size // patch_size (336 // 14 = 24)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches of one image (576 for 336 px / 14)."""
        return self.grid_size**2

    @property
    def image_tokens(self) -> int:
        """Image placeholder tokens (= image embeddings) per image: the patches, plus the CLS token
        with the "full" feature selection."""
        return self.num_patches + (self.vision_feature_select_strategy == "full")

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """One image's pixel_values as CLIPImageProcessor gives them: (C, image_size, image_size)."""
        return (self.in_channels, self.image_size, self.image_size)

    def replace(self, **kw) -> LlavaConfig:
        return dataclasses.replace(self, **kw)


def parse_hf_config(hf: dict, **runtime) -> LlavaConfig:
    """A `LlavaConfig` from an HF LLaVA config dict (missing sub-config fields take transformers'
    defaults). `runtime`: dtype, param_dtype, remat, remat_policy, logits_chunk, vision_block,
    vision_chunk, scan_layers, scan_vision."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise UnsupportedModelError(
            f"unsupported model_type {hf.get('model_type')!r} for the LLaVA family {MODEL_TYPES}"
        )
    text_in, vis_in = dict(hf.get("text_config") or {}), dict(hf.get("vision_config") or {})
    if text_in.get("model_type", "llama") != "llama":
        raise ValueError(f"config.json: text_config.model_type {text_in['model_type']!r}: only llama is supported")
    if vis_in.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ValueError(
            f"config.json: vision_config.model_type {vis_in['model_type']!r}: only clip_vision_model is supported"
        )
    text = dict(TEXT_DEFAULTS, **text_in)
    vis = dict(CLIP_DEFAULTS, **vis_in) if hf.get("vision_config") is not None else dict(VISION_DEFAULTS)
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only default RoPE)")
    if text["hidden_act"] != "silu":
        raise ValueError(f"config.json: text_config.hidden_act {text['hidden_act']!r}: only silu is supported")
    strategy = hf.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise ValueError(f"config.json: vision_feature_select_strategy {strategy!r}: expected 'default' or 'full'")
    layer = hf.get("vision_feature_layer", -2)
    layers = (int(layer),) if isinstance(layer, int) else tuple(int(i) for i in layer)
    depth = int(vis["num_hidden_layers"])
    for i in layers:
        if not -(depth + 1) <= i <= depth:
            raise ValueError(f"config.json: vision_feature_layer {i} outside the tower's {depth + 1} hidden states")
    heads = int(text["num_attention_heads"])
    tie = bool(hf.get("tie_word_embeddings", False) or text_in.get("tie_word_embeddings", False))
    return LlavaConfig(
        model_type="llava",
        vocab_size=int(text["vocab_size"]),
        hidden_size=int(text["hidden_size"]),
        intermediate_size=int(text["intermediate_size"]),
        num_hidden_layers=int(text["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or int(text["hidden_size"]) // heads),
        rms_norm_eps=float(text["rms_norm_eps"]),
        rope_theta=float(rope.get("rope_theta", text["rope_theta"])),
        attention_bias=bool(text["attention_bias"]),
        mlp_bias=bool(text["mlp_bias"]),
        tie_word_embeddings=tie,
        image_token_id=int(hf.get("image_token_index", hf.get("image_token_id", 32000))),
        bos_token_id=text.get("bos_token_id"),
        eos_token_id=text.get("eos_token_id"),
        pad_token_id=text.get("pad_token_id"),
        vision_depth=depth,
        vision_hidden_size=int(vis["hidden_size"]),
        vision_num_heads=int(vis["num_attention_heads"]),
        vision_intermediate_size=int(vis["intermediate_size"]),
        vision_hidden_act=str(vis["hidden_act"]),
        vision_layer_norm_eps=float(vis["layer_norm_eps"]),
        image_size=int(vis["image_size"]),
        patch_size=int(vis["patch_size"]),
        in_channels=int(vis["num_channels"]),
        vision_feature_layer=layers,
        vision_feature_select_strategy=strategy,
        projector_hidden_act=str(hf.get("projector_hidden_act", "gelu")),
        projector_bias=bool(hf.get("multimodal_projector_bias", True)),
        hf_config=copy.deepcopy(hf),
        **runtime,
    )


TEXT_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def with_special_ids(hf: dict, ids: dict) -> dict:
    """A copy of `hf` with the tokenizer's special ids of `ids` written explicitly: bos / eos / pad
    into `text_config` (and the top level), ``image_token_id`` as LLaVA's `image_token_index`."""
    hf = copy.deepcopy(hf)
    text = {k: ids[k] for k in TEXT_SPECIAL_IDS if k in ids}
    hf["text_config"] = dict(hf.get("text_config") or {}, **text)
    hf.update(text)
    for key in ("image_token_id", "image_token_index"):  # Qwen's spelling, or the LLaVA codec's
        if key in ids:
            hf["image_token_index"] = int(ids[key])
    return hf
