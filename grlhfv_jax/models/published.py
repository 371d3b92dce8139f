"""The published config.json of the checkpoints the paper trains (the fields a model is built from),
so that a run can be planned (`grlhfv_jax.dry_run`) without the checkpoint on disk.

    hf = published.HF_CONFIGS["Qwen2.5-VL-7B-Instruct"]
    model = nnx.eval_shape(lambda: models.from_config(hf, rngs=nnx.Rngs(0)))

Values as in the hub's config.json of each repository (Qwen/<name>, llava-hf/<name>); parameter counts from
`nnx.eval_shape` on them are in docs/models.md ("Memory") and tested (tests/test_dry_run.py).
"""

from __future__ import annotations

import copy

_IDS = dict(
    bos_token_id=151643,
    eos_token_id=151645,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    image_token_id=151655,
    video_token_id=151656,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)


def _qwen2_vl(hidden, inter, layers, heads, kv, vocab, tie):
    return dict(
        _IDS,
        model_type="qwen2_vl",
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=32768,
        vision_config=dict(
            depth=32,
            embed_dim=1280,
            mlp_ratio=4,
            num_heads=16,
            in_chans=3,
            hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
    )


def _qwen2_5_vl(hidden, inter, layers, heads, kv, vocab, tie):
    return dict(
        _IDS,
        model_type="qwen2_5_vl",
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=128000,
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            in_chans=3,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            hidden_act="silu",
        ),
    )


_TABLE = {
    "Qwen2-VL-2B-Instruct": _qwen2_vl(1536, 8960, 28, 12, 2, 151936, True),
    "Qwen2-VL-7B-Instruct": _qwen2_vl(3584, 18944, 28, 28, 4, 152064, False),
    "Qwen2.5-VL-3B-Instruct": _qwen2_5_vl(2048, 11008, 36, 16, 2, 151936, True),
    "Qwen2.5-VL-7B-Instruct": _qwen2_5_vl(3584, 18944, 28, 28, 4, 152064, False),
}
# LLaVA-1.5-7B (the paper's appendix), llava-hf/llava-1.5-7b-hf's config.json: CLIP ViT-L/14-336, Vicuna-7B
_TABLE["llava-1.5-7b-hf"] = dict(
    model_type="llava",
    image_token_index=32000,
    pad_token_id=32001,
    projector_hidden_act="gelu",
    tie_word_embeddings=False,
    vision_feature_layer=-2,
    vision_feature_select_strategy="default",
    vocab_size=32064,
    text_config=dict(model_type="llama", max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32064),
    vision_config=dict(
        model_type="clip_vision_model",
        hidden_size=1024,
        image_size=336,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=24,
        patch_size=14,
        projection_dim=768,
        vocab_size=32000,
    ),
)
# the paper's "Qwen2-VL-2B" / "Qwen2-VL-7B" policies: the base and instruct checkpoints share the shapes
_TABLE["Qwen2-VL-2B"] = _TABLE["Qwen2-VL-2B-Instruct"]
_TABLE["Qwen2-VL-7B"] = _TABLE["Qwen2-VL-7B-Instruct"]

HF_CONFIGS = _TABLE
NAMES = tuple(_TABLE)


def hf_config(name: str) -> dict:
    """A copy of the published config.json of `name` (KeyError lists the known names)."""
    if name not in _TABLE:
        raise KeyError(f"no published config for {name!r} (known: {', '.join(NAMES)})")
    return copy.deepcopy(_TABLE[name])
