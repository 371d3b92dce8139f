"""Tiny random Hugging Face Qwen2-VL / Qwen2.5-VL checkpoints, built offline with transformers.

Usable from any test (module- or session-scoped fixtures):

    path = save_tiny_model(tmp_path_factory.mktemp("q2"), "qwen2_vl")
    model = grlhfv_jax.models.load_pretrained(path)

Token ids of the tiny vocabulary (128): PAD 0, BOS 1, EOS 2, IMAGE 100 (<|image_pad|>),
VISION_START 101, VISION_END 102, VIDEO 103. `make_batch` builds input_ids with expanded image
tokens, random pixel_values and the torch-side kwargs (incl. mm_token_type_ids).
"""

from __future__ import annotations

import os

import numpy as np

PAD, BOS, EOS, IMAGE, VISION_START, VISION_END, VIDEO = 0, 1, 2, 100, 101, 102, 103
VOCAB = 128
PATCH = 14
MERGE = 2
TEMPORAL = 2
PATCH_DIM = 3 * TEMPORAL * PATCH * PATCH

_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
)


# A tokenizer corpus and image-processor settings for the tiny engine-side models (tests of export, serve).
SHAPES_CORPUS = [
    "What colour is the shape? It is red.",
    "Which one is bigger, the circle or the square?",
    "You are a helpful assistant. Describe the image.",
    "The square is blue and the circle is green.",
] * 30
IMAGE_SETTINGS = dict(
    min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 9, patch_size=14, merge_size=2, temporal_patch_size=2
)


def tiny_hf_dict(hidden=32, layers=2, heads=2, kv_heads=1, *, tie=True, max_positions=512) -> dict:
    """A tiny Qwen2-VL config dict (as configs/demo.py's: the engine's hf_config; vocabulary and special
    ids come from the tokenizer), no transformers needed."""
    half = hidden // heads // 2
    t = half // 4
    return dict(
        model_type="qwen2_vl",
        tie_word_embeddings=tie,
        text_config=dict(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            rms_norm_eps=1e-6,
            max_position_embeddings=max_positions,
            rope_parameters=dict(
                rope_type="default", rope_theta=10000.0, mrope_section=[t, (half - t) // 2, half - t - (half - t) // 2]
            ),
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=hidden,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
    )


def spread(model, rng) -> None:
    """O(0.3) random weights from `rng` (a numpy Generator; norm weights 1 + 0.1 noise) over an engine
    (nnx) model: with the initialiser's small weights (or 0.1) a tiny model repeats one token whatever
    it is shown, a weak test of generation."""
    import jax
    from flax import nnx

    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            v = node.get_value()
            noise = rng.standard_normal(v.shape).astype(np.float32)
            norm = (
                v.ndim == 1
                and path[-1] in ("weight", "scale")
                and any("norm" in str(p) or "ln_q" in str(p) for p in path)
            )
            node.set_value(jax.numpy.asarray(1.0 + 0.1 * noise if norm else 0.3 * noise, v.dtype))


def tiny_hf_config(
    family: str = "qwen2_vl", *, tie: bool = False, text: dict | None = None, vision: dict | None = None
):
    """A transformers config for a tiny model. family: 'qwen2_vl' | 'qwen2_5_vl'.
    text / vision: overrides of the text / vision sub-config fields."""
    import transformers

    t = dict(_TEXT, **(text or {}))
    common = dict(
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=tie,
    )
    if family == "qwen2_vl":
        v = dict(
            dict(
                depth=2,
                embed_dim=32,
                hidden_size=t["hidden_size"],
                num_heads=4,
                mlp_ratio=2,
                patch_size=PATCH,
                spatial_merge_size=MERGE,
                temporal_patch_size=TEMPORAL,
            ),
            **(vision or {}),
        )
        return transformers.Qwen2VLConfig(text_config=t, vision_config=v, **common)
    if family == "qwen2_5_vl":
        v = dict(
            dict(
                depth=3,
                hidden_size=32,
                intermediate_size=48,
                out_hidden_size=t["hidden_size"],
                num_heads=4,
                patch_size=PATCH,
                spatial_merge_size=MERGE,
                temporal_patch_size=TEMPORAL,
                window_size=56,
                fullatt_block_indexes=[1],
            ),
            **(vision or {}),
        )
        return transformers.Qwen2_5_VLConfig(text_config=t, vision_config=v, **common)
    raise ValueError(f"unknown family {family!r}")


def build_tiny_torch_model(family="qwen2_vl", *, seed=0, scale=0.1, **cfg_kw):
    """A tiny transformers model with O(0.1) random weights (norm weights 1 + 0.1 noise), eval mode, fp32."""
    import torch
    import transformers

    cfg = tiny_hf_config(family, **cfg_kw)
    cls = (
        transformers.Qwen2VLForConditionalGeneration
        if family == "qwen2_vl"
        else transformers.Qwen2_5_VLForConditionalGeneration
    )
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or "ln_q" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(scale * noise)
    return model


def save_tiny_model(path, family="qwen2_vl", *, seed=0, dtype="float32", max_shard_size=None, **cfg_kw) -> str:
    """Builds a tiny random model, saves it with save_pretrained (hub key names) into `path`
    (created), returns the path as str. dtype: 'float32' | 'bfloat16' on disk."""
    import torch

    model = build_tiny_torch_model(family, seed=seed, **cfg_kw)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kw)
    return path


def image_tokens(grid) -> int:
    t, h, w = grid
    return t * h * w // (MERGE * MERGE)


def make_batch(rows, *, pad_side="left", seed=0):
    """Builds a batch from rows given as lists of items: an int list (text token ids) or a
    (t, h, w) tuple (an image: <vision_start> + <image_pad> * n + <vision_end>).

    Returns dict of numpy: input_ids [B, T] int32, attention_mask [B, T] int32, pixel_values
    [N, PATCH_DIM] float32 (None without images), image_grid_thw [n, 3] int64 (or None),
    mm_token_type_ids [B, T] (1 on image pads) for the torch side."""
    rng = np.random.default_rng(seed)
    seqs, grids = [], []
    for row in rows:
        ids = []
        for item in row:
            if isinstance(item, tuple):
                grids.append(item)
                ids += [VISION_START] + [IMAGE] * image_tokens(item) + [VISION_END]
            else:
                ids += list(item)
        seqs.append(ids)
    T = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), T), PAD, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if pad_side == "left" else slice(0, len(s))
        input_ids[b, sl] = s
        mask[b, sl] = 1
    n_patches = sum(int(np.prod(g)) for g in grids)
    return dict(
        input_ids=input_ids,
        attention_mask=mask,
        pixel_values=rng.standard_normal((n_patches, PATCH_DIM)).astype(np.float32) if grids else None,
        image_grid_thw=np.asarray(grids, np.int64).reshape(-1, 3) if grids else None,
        mm_token_type_ids=(input_ids == IMAGE).astype(np.int32),
    )


def torch_forward(model, batch, *, position_ids=None, output_hidden_states=False):
    """Runs the transformers model on a make_batch batch; returns the output object."""
    import torch

    kw = dict(
        input_ids=torch.as_tensor(batch["input_ids"], dtype=torch.long),
        attention_mask=torch.as_tensor(batch["attention_mask"], dtype=torch.long),
        mm_token_type_ids=torch.as_tensor(batch["mm_token_type_ids"], dtype=torch.long),
    )
    if batch.get("pixel_values") is not None:
        kw["pixel_values"] = torch.as_tensor(batch["pixel_values"])
        kw["image_grid_thw"] = torch.as_tensor(batch["image_grid_thw"], dtype=torch.long)
    if position_ids is not None:
        kw["position_ids"] = torch.as_tensor(np.asarray(position_ids), dtype=torch.long)
    with torch.no_grad():
        return model(**kw, output_hidden_states=output_hidden_states)


def build_and_save(path, family="qwen2_vl", *, seed=0, dtype="float32", max_shard_size=None, **cfg_kw):
    """save_tiny_model that also returns the fp32 torch model: (path, torch_model)."""
    model = build_tiny_torch_model(family, seed=seed, **cfg_kw)
    path = save_tiny_model(path, family, seed=seed, dtype=dtype, max_shard_size=max_shard_size, **cfg_kw)
    return path, model


def assert_stacked_equal(stacked, per_slot, tol, what, slots):
    """Every leaf of `stacked` (a pure dict of parameters stacked [slots, ...] for a scan) equals, in
    slot i, the same leaf of `per_slot[i]` ({i: tree}: the unrolled model's layers or blocks)."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(stacked)[0]
    assert flat
    for path, arr in flat:
        assert arr.shape[0] == slots, (what, path, arr.shape)
        for i in range(slots):
            want = per_slot[i]
            for k in path:
                want = want[k.key]
            np.testing.assert_allclose(
                np.asarray(arr[i]),
                np.asarray(want),
                atol=tol,
                rtol=tol,
                err_msg=f"{what} {jax.tree_util.keystr(path)} slot {i}",
            )
