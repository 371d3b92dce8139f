"""LLaVA-1.5 (models/llava) against transformers' LlavaForConditionalGeneration (PyTorch, fp32):
logits on padded batches with images, greedy generation, sampled log-probs vs teacher forcing,
8 fake devices vs one, and Hugging Face save / load both ways."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from grlhfv_jax import models
from grlhfv_jax import sharding as S
from grlhfv_jax.models import llava

PAD, BOS, EOS, IMAGE = 0, 1, 2, 90
VOCAB = 96
TOL = 1e-4

# Tiny configs: GQA / MHA, depth, image and patch sizes, tied / untied, biases, feature layers.
CONFIGS = {
    "gqa": dict(text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2),
                vision=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                            image_size=28, patch_size=14)),
    "mha_tied": dict(text=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=3,
                               num_key_value_heads=3, attention_bias=True, tie_word_embeddings=True),
                     vision=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                                 image_size=42, patch_size=14), tie=True),
    "full_multilayer": dict(text=dict(hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=1, mlp_bias=True, head_dim=16),
                            vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=32, patch_size=8, hidden_act="gelu"),
                            top=dict(vision_feature_layer=[-3, -1], vision_feature_select_strategy="full",
                                     multimodal_projector_bias=False)),
}


def hf_config(name):
    import transformers
    c = CONFIGS[name]
    text = dict(model_type="llama", vocab_size=VOCAB, rms_norm_eps=1e-6, max_position_embeddings=256,
                bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, **c["text"])
    vision = dict(model_type="clip_vision_model", projection_dim=8, **c["vision"])
    return transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE,
                                    tie_word_embeddings=c.get("tie", False), **c.get("top", {}))


def build_torch(name, seed=0, scale=0.15):
    """transformers' model with O(scale) random weights (norm weights 1 + 0.1 noise), eval, fp32, eager attention."""
    import torch
    import transformers
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(hf_config(name)).eval()
    model.config._attn_implementation = "eager"
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            norm = p.ndim == 1 and ("norm" in pname or "layrnorm" in pname) and pname.endswith("weight")
            p.copy_(1.0 + 0.1 * noise if norm else scale * noise)
    return model


def make_batch(cfg, rows, *, pad_side, seed=0):
    """rows: per row a list of items, an int n = n random text tokens, "img" = one image's tokens.
    -> dict(input_ids, attention_mask [B, T] int32, pixel_values [n, C, S, S] float32)."""
    rng = np.random.default_rng(seed)
    seqs, n_img = [], 0
    for row in rows:
        ids = [BOS]
        for item in row:
            if item == "img":
                ids += [IMAGE] * cfg.image_tokens
                n_img += 1
            else:
                ids += list(rng.integers(3, IMAGE - 1, item))
        seqs.append(ids)
    T = max(map(len, seqs))
    ids = np.full((len(seqs), T), PAD, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if pad_side == "left" else slice(0, len(s))
        ids[b, sl], mask[b, sl] = s, 1
    pixels = rng.standard_normal((n_img,) + cfg.pixel_shape).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)


def torch_logits(model, batch, *, position_ids=True):
    """transformers' logits [B, T, V] (numpy); position_ids=True passes generate's positions
    (cumsum of the mask - 1), False lets the model use its default (0..T-1)."""
    import torch
    kw = {}
    if position_ids:
        m = torch.as_tensor(batch["attention_mask"]).long()
        kw["position_ids"] = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)
    pv = batch["pixel_values"]
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(batch["input_ids"]).long(),
                    attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
                    pixel_values=torch.as_tensor(pv) if len(pv) else None, **kw)
    return out.logits.float().numpy()


@nnx.jit
def forward(model, ids, mask, pixels):
    return model(ids, mask, pixels)


def max_diff_real(a, b, mask):
    m = np.asarray(mask).astype(bool)
    return float(np.max(np.abs(np.asarray(a)[m] - np.asarray(b)[m])))


ROWS = [[3, "img", 2], [2, "img", 1, "img", 3], [6]]     # one image, two images, text only


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(name, torch model, our model loaded from transformers' save_pretrained folder, folder)."""
    tm = build_torch(request.param)
    path = str(tmp_path_factory.mktemp(f"llava_{request.param}"))
    tm.save_pretrained(path)
    return request.param, tm, models.load_pretrained(path), path


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_logits_match_transformers(pair, pad_side):
    name, tm, ours, _ = pair
    batch = make_batch(ours.config, ROWS, pad_side=pad_side, seed=1)
    ref = torch_logits(tm, batch, position_ids=pad_side == "left")
    got = forward(ours, batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    diff = max_diff_real(got, ref, batch["attention_mask"])
    print(f"{name} {pad_side}: max abs diff {diff:.2e} (logit scale {np.abs(ref).max():.1f})")
    assert diff <= TOL, (name, pad_side, diff)
