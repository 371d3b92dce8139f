"""Checkpoint I/O of grlhfv_jax.models: hub key names both ways, sharded / bf16 checkpoints,
mesh placement while loading, and clear errors on bad inputs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

import tiny_models as tm
from grlhfv_jax.models import CheckpointError, UnsupportedModelError, from_config, load_pretrained, save_pretrained

TOL = 1e-4
_fwd = nnx.jit(lambda m, x, a, pv, g: m(x, a, pv, g))
BATCH = tm.make_batch([[[5, 6], (1, 8, 12), [7, 8]], [[3], (1, 4, 4), [9], (1, 6, 4), [10]]])
FAMILIES = {"qwen2_vl": dict(), "qwen2_5_vl": dict(tie=True)}
TORCH_CLS = {
    "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
}


def _logits(model, b=BATCH):
    return np.asarray(_fwd(model, b["input_ids"], b["attention_mask"], b["pixel_values"], b["image_grid_thw"]))


def _close(a, b, tol=TOL):
    m = BATCH["attention_mask"].astype(bool)
    d = np.abs(a - b)[m].max()
    assert d <= tol, d


@pytest.fixture(scope="module", params=list(FAMILIES))
def ckpt(request, tmp_path_factory):
    fam = request.param
    path, tmodel = tm.build_and_save(tmp_path_factory.mktemp(fam), fam, seed=7, **FAMILIES[fam])
    model = load_pretrained(path)
    return fam, path, tmodel, model, _logits(model)


def test_save_roundtrip_transformers(ckpt, tmp_path):
    """Our save_pretrained (single file and sharded index) loads in transformers with the same
    logits, and back in ours."""
    fam, path, tmodel, model, ours = ckpt
    _close(ours, tm.torch_forward(tmodel, BATCH).logits.numpy())
    for sub, kw in [("single", {}), ("sharded", {"max_shard_size": 100_000})]:
        out = tmp_path / sub
        save_pretrained(model, out, **kw)
        files = sorted(os.listdir(out))
        if sub == "sharded":
            assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
        else:
            assert "model.safetensors" in files
            # hub key names, same set as transformers writes
            assert set(load_file(out / "model.safetensors")) == set(load_file(os.path.join(path, "model.safetensors")))
        reloaded = TORCH_CLS[fam].from_pretrained(out, dtype=torch.float32).eval()
        _close(ours, tm.torch_forward(reloaded, BATCH).logits.numpy())
        _close(_logits(load_pretrained(out)), ours, 1e-6)


def test_bf16_on_disk_and_save_dtype(ckpt, tmp_path):
    fam, path, tmodel, model, ours = ckpt
    p16 = tm.save_tiny_model(tmp_path / "bf16", fam, seed=7, dtype="bfloat16", max_shard_size="200KB", **FAMILIES[fam])
    assert os.path.exists(os.path.join(p16, "model.safetensors.index.json"))  # transformers-sharded too
    ref = TORCH_CLS[fam].from_pretrained(p16, dtype=torch.float32).eval()
    m = load_pretrained(p16)  # bf16 on disk -> fp32 params
    assert m.model.embed_tokens.weight[...].dtype == jnp.float32
    _close(_logits(m), tm.torch_forward(ref, BATCH).logits.numpy())
    save_pretrained(model, tmp_path / "out16", dtype=jnp.bfloat16)
    assert json.load(open(tmp_path / "out16" / "config.json"))["dtype"] == "bfloat16"
    assert all(v.dtype == jnp.bfloat16 for v in load_file(tmp_path / "out16" / "model.safetensors").values())


@pytest.mark.parametrize("ckpt", ["qwen2_5_vl"], indirect=True)
def test_load_onto_mesh(ckpt):
    from grlhfv_jax.sharding import make_mesh

    fam, path, tmodel, model, ours = ckpt
    mesh = make_mesh((1, 4, 2))
    m = load_pretrained(path, mesh=mesh)
    w = m.model.layers[0].mlp.up_proj.kernel[...]  # ("embed", "mlp") -> ("fsdp", "tensor")
    assert w.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert len(w.addressable_shards) == 8 and w.addressable_shards[0].data.shape == (16, 48)
    with jax.set_mesh(mesh):
        _close(_logits(m), ours, 1e-5)


@pytest.mark.parametrize("ckpt", ["qwen2_vl"], indirect=True)
def test_from_config_random_init(ckpt):
    fam, path, tmodel, model, ours = ckpt
    cfg = json.load(open(os.path.join(path, "config.json")))
    m = from_config(cfg, rngs=nnx.Rngs(1), scalar_head=True)
    shapes = lambda mod: {k: v[...].shape for k, v in nnx.iter_graph(mod) if isinstance(v, nnx.Param)}
    assert {k: v for k, v in shapes(m).items() if k[0] != "score_head"} == shapes(model)
    b = tm.make_batch([[[1, 2, 3]]])
    logits, score = nnx.jit(lambda m, x: (m(x), m.score(x)))(m, b["input_ids"])
    assert logits.shape == (1, 3, tm.VOCAB) and np.isfinite(np.asarray(logits)).all()
    assert score.shape == (1,)


# ----------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def q2(tmp_path_factory):
    return tm.save_tiny_model(tmp_path_factory.mktemp("err"), "qwen2_vl", seed=1)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_error_corrupt_and_truncated_file(q2, tmp_path):
    bad = _copy(q2, tmp_path / "corrupt")
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file .*model.safetensors"):
        load_pretrained(bad)
    trunc = _copy(q2, tmp_path / "trunc")
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_pretrained(trunc)


def test_error_missing_shard(q2, tmp_path):
    m = load_pretrained(q2)
    save_pretrained(m, tmp_path / "s", max_shard_size=100_000)
    index = json.load(open(tmp_path / "s" / "model.safetensors.index.json"))
    victim = sorted(set(index["weight_map"].values()))[1]
    os.remove(tmp_path / "s" / victim)
    with pytest.raises(CheckpointError, match=f"missing shard file '{victim}'"):
        load_pretrained(tmp_path / "s")


def test_error_model_type(q2, tmp_path):
    bad = _copy(q2, tmp_path / "mt")
    cfg = json.load(open(bad / "config.json"))
    cfg["model_type"] = "llama"
    json.dump(cfg, open(bad / "config.json", "w"))
    with pytest.raises(UnsupportedModelError, match="'llama'.*qwen2_vl, qwen2_5_vl"):
        load_pretrained(bad)


def _rewrite(src, dst, fn):
    d = _copy(src, dst)
    t = load_file(d / "model.safetensors")
    fn(t)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    return d


def test_error_missing_unexpected_shape(q2, tmp_path):
    d = _rewrite(q2, tmp_path / "miss", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_pretrained(d)
    d = _rewrite(q2, tmp_path / "unexp", lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*model\.extra\.weight"):
        load_pretrained(d)
    d = _rewrite(q2, tmp_path / "shape", lambda t: t.update({"model.norm.weight": np.ones(65, np.float32)}))
    with pytest.raises(CheckpointError, match=r"shape mismatch for tensor 'model\.norm\.weight'.*\[65\].*\[64\]"):
        load_pretrained(d)
    d = _rewrite(q2, tmp_path / "score", lambda t: t.update({"score.weight": np.ones((1, 64), np.float32)}))
    with pytest.raises(CheckpointError, match="scalar_head=True"):
        load_pretrained(d)
    rm = load_pretrained(d, scalar_head=True)
    np.testing.assert_array_equal(np.asarray(rm.score_head.kernel[...]), np.ones((64, 1)))


def test_error_image_count_mismatch(q2):
    m = load_pretrained(q2)
    b = tm.make_batch([[[5], (1, 4, 4), [6], (1, 4, 4), [7]]])
    with pytest.raises(ValueError, match="image count mismatch: image_grid_thw has 1 images but input_ids hold 2"):
        m(b["input_ids"], b["attention_mask"], b["pixel_values"][:16], b["image_grid_thw"][:1])
    ids = b["input_ids"].copy()
    ids[0, 2] = 7  # one <|image_pad|> token fewer
    with pytest.raises(ValueError, match="image token mismatch: input_ids hold 7"):
        m(ids, b["attention_mask"], b["pixel_values"], b["image_grid_thw"])
    with pytest.raises(ValueError, match="no pixel_values"):
        m(b["input_ids"], b["attention_mask"])
    with pytest.raises(ValueError, match="covers 32 patches but pixel_values has 16"):
        m(b["input_ids"], b["attention_mask"], b["pixel_values"][:16], b["image_grid_thw"])


def test_legacy_flat_config_matches_transformers():
    """The hub's old flat config.json (Qwen/Qwen2-VL-2B-Instruct style: text fields at the top,
    rope_scaling type mrope, vision embed_dim / in_chans) reads as transformers reads it."""
    import dataclasses

    from grlhfv_jax.models import parse_hf_config

    legacy = {
        "model_type": "qwen2_vl",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_attention_heads": 12,
        "num_hidden_layers": 28,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1e6,
        "tie_word_embeddings": True,
        "vocab_size": 151936,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "eos_token_id": 151645,
        "bos_token_id": 151643,
        "torch_dtype": "bfloat16",
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "hidden_size": 1536,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
    }
    ours = parse_hf_config(json.loads(json.dumps(legacy)))
    theirs = parse_hf_config(transformers.Qwen2VLConfig(**json.loads(json.dumps(legacy))).to_dict())
    for f in dataclasses.fields(ours):
        if f.name != "hf_config":
            assert getattr(ours, f.name) == getattr(theirs, f.name), f.name
    assert (ours.head_dim, ours.vision_intermediate_size, ours.mrope_section) == (128, 5120, (16, 24, 24))


def test_every_family_folder_exports_the_family_interface():
    """models/families.py: model_type -> one folder per family with what models.weights and the
    stages use (a second family is one new folder)."""
    from grlhfv_jax.models import families

    for model_type in families.SUPPORTED_MODEL_TYPES:
        fam = families.family(model_type)
        assert fam.__name__.startswith("grlhfv_jax.models.") and fam.__name__.count(".") == 2
        assert model_type in fam.MODEL_TYPES
        for name in ("parse_config", "build", "from_config", "hub_key", "hub_shape", "HUB_ALIASES"):
            assert hasattr(fam, name), (model_type, name)
    assert families.family("qwen2_vl").hub_key(("merger", "mlp_0", "kernel")) == "merger.mlp.0.weight"
    assert families.family("llava").__name__ == "grlhfv_jax.models.llava"
    with pytest.raises(families.UnsupportedModelError, match="'llava_next'"):
        families.family("llava_next")
