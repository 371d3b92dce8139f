"""`VLConfig`: a frozen, flat view of a Hugging Face Qwen2-VL / Qwen2.5-VL config.json.

Accepts both layouts found on the hub: the old flat one (text fields at the top level,
`rope_scaling={"type": "mrope", ...}`, e.g. Qwen/Qwen2-VL-2B-Instruct) and the nested one that
transformers 5 writes (`text_config` / `vision_config`, `rope_parameters`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax.numpy as jnp

from ..errors import UnsupportedModelError

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


@dataclasses.dataclass(frozen=True)
class VLConfig:
    model_type: str
    # language model
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, int, int]
    tie_word_embeddings: bool
    # special tokens
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    eos_token_id: Any
    pad_token_id: int | None
    # vision tower
    vision_depth: int
    vision_hidden_size: int  # width of the vision blocks
    vision_num_heads: int
    vision_intermediate_size: int  # MLP width of the vision blocks
    vision_hidden_act: str
    vision_out_hidden_size: int  # merger output (= language hidden_size)
    vision_rope_theta: float
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    window_size: int = 0  # Qwen2.5 only (pixels)
    fullatt_block_indexes: tuple[int, ...] = ()  # Qwen2.5 only
    # runtime choices (not from config.json)
    dtype: Any = jnp.float32  # compute dtype
    param_dtype: Any = jnp.float32  # parameter (master weight) dtype
    remat: bool = False  # rematerialise each decoder / vision block
    remat_policy: str = "nothing"  # what a remat block keeps for its backward pass (layers.REMAT_POLICIES)
    logits_chunk: int = 0  # LM-head columns per piece in the train steps' losses (0: all at once)
    vision_block: int = 0  # patches per vision attention block (0: dense; qwen2_vl/vision.py)
    vision_chunk: int = 0  # query patches per vision attention piece, whole blocks (0: all at once)
    scan_layers: bool = False  # decoder layers stacked [L, ...] and run by a scan (model.TextModel)
    scan_vision: bool = False  # vision blocks stacked [depth, ...] and run by a scan (vision.VisionTower)
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def is_qwen2_5(self) -> bool:
        return self.model_type == "qwen2_5_vl"

    @property
    def vision_head_dim(self) -> int:
        return self.vision_hidden_size // self.vision_num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch in `pixel_values`: C * t * p * p."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    def replace(self, **kw) -> VLConfig:
        return dataclasses.replace(self, **kw)


def _req(d: dict, key: str, where: str):
    if key not in d or d[key] is None:
        raise ValueError(f"config.json: missing field {where}{key!r}")
    return d[key]


def parse_hf_config(hf: dict, **runtime) -> VLConfig:
    """Builds a `VLConfig` from an HF config dict (either layout). `runtime`: dtype, param_dtype, remat, remat_policy,
    logits_chunk, vision_block, vision_chunk, scan_layers, scan_vision."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedModelError(f"unsupported model_type {model_type!r} for the Qwen2-VL family {MODEL_TYPES}")
    text = dict(hf)
    text.update(hf.get("text_config") or {})  # nested layout wins, flat layout falls through
    vis = hf.get("vision_config") or {}
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only default M-RoPE)")
    if text.get("use_sliding_window"):
        raise ValueError("config.json: use_sliding_window=true is not supported (no sliding-window layers)")
    rope_theta = rope.get("rope_theta", text.get("rope_theta", 1000000.0))
    mrope = tuple(rope.get("mrope_section", (16, 24, 24)))
    hidden = _req(text, "hidden_size", "")
    heads = _req(text, "num_attention_heads", "")
    head_dim = hidden // heads
    if 2 * sum(mrope) != head_dim:
        raise ValueError(f"config.json: mrope_section {list(mrope)} must sum to head_dim/2 = {head_dim // 2}")
    vrope = vis.get("rope_parameters") or {}
    qwen25 = model_type == "qwen2_5_vl"
    if qwen25:
        v_width = _req(vis, "hidden_size", "vision_config.")
        v_inter = _req(vis, "intermediate_size", "vision_config.")
        v_out = vis.get("out_hidden_size", hidden)
        v_act = vis.get("hidden_act", "silu")
    else:
        v_width = _req(vis, "embed_dim", "vision_config.")
        v_inter = int(v_width * vis.get("mlp_ratio", 4))
        v_out = vis.get("hidden_size", hidden)
        v_act = vis.get("hidden_act", "quick_gelu")
    tie = bool(hf.get("tie_word_embeddings", False) or (hf.get("text_config") or {}).get("tie_word_embeddings", False))
    return VLConfig(
        model_type=model_type,
        vocab_size=_req(text, "vocab_size", ""),
        hidden_size=hidden,
        intermediate_size=_req(text, "intermediate_size", ""),
        num_hidden_layers=_req(text, "num_hidden_layers", ""),
        num_attention_heads=heads,
        num_key_value_heads=text.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        mrope_section=mrope,
        tie_word_embeddings=tie,
        image_token_id=int(hf.get("image_token_id", 151655)),
        video_token_id=int(hf.get("video_token_id", 151656)),
        vision_start_token_id=int(hf.get("vision_start_token_id", 151652)),
        vision_end_token_id=int(hf.get("vision_end_token_id", 151653)),
        eos_token_id=text.get("eos_token_id"),
        pad_token_id=text.get("pad_token_id"),
        vision_depth=_req(vis, "depth", "vision_config."),
        vision_hidden_size=v_width,
        vision_num_heads=_req(vis, "num_heads", "vision_config."),
        vision_intermediate_size=v_inter,
        vision_hidden_act=v_act,
        vision_out_hidden_size=v_out,
        vision_rope_theta=float(vrope.get("rope_theta", 10000.0)),
        in_channels=int(vis.get("in_channels", vis.get("in_chans", 3))),
        patch_size=int(vis.get("patch_size", vis.get("spatial_patch_size", 14))),
        temporal_patch_size=int(vis.get("temporal_patch_size", 2)),
        spatial_merge_size=int(vis.get("spatial_merge_size", 2)),
        window_size=int(vis.get("window_size", 0)) if qwen25 else 0,
        fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", ())) if qwen25 else (),
        hf_config=copy.deepcopy(hf),
        **runtime,
    )


# The special token ids config.json carries: the language model's (in `text_config` for the nested
# layout, at the top level for the flat one) and the image / video markers (top level).
TEXT_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
VISION_SPECIAL_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def with_special_ids(hf: dict, ids: dict) -> dict:
    """A copy of HF config dict `hf` with the special token ids of `ids` (keys of TEXT_SPECIAL_IDS and
    VISION_SPECIAL_IDS; others ignored) written explicitly: a key config.json leaves out is filled
    by transformers with the hub's default (bos_token_id 151643, image_token_id 151655, ...), ids of
    another vocabulary. Text ids go into `text_config` when there is one and to the top level
    (the flat layout; readers of the top level) either way."""
    hf = copy.deepcopy(hf)
    text = {k: ids[k] for k in TEXT_SPECIAL_IDS if k in ids}
    if isinstance(hf.get("text_config"), dict):
        hf["text_config"].update(text)
    hf.update(text)
    hf.update({k: int(ids[k]) for k in VISION_SPECIAL_IDS if k in ids})
    return hf
