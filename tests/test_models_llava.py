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
    "gqa": dict(
        text=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        ),
        vision=dict(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
    ),
    "mha_tied": dict(
        text=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=3,
            num_key_value_heads=3,
            attention_bias=True,
            tie_word_embeddings=True,
        ),
        vision=dict(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=42,
            patch_size=14,
        ),
        tie=True,
    ),
    "full_multilayer": dict(
        text=dict(
            hidden_size=32,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            mlp_bias=True,
            head_dim=16,
        ),
        vision=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            hidden_act="gelu",
        ),
        top=dict(vision_feature_layer=[-3, -1], vision_feature_select_strategy="full", multimodal_projector_bias=False),
    ),
}


def hf_config(name):
    import transformers

    c = CONFIGS[name]
    text = dict(
        model_type="llama",
        vocab_size=VOCAB,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        **c["text"],
    )
    vision = dict(model_type="clip_vision_model", projection_dim=8, **c["vision"])
    return transformers.LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=IMAGE,
        tie_word_embeddings=c.get("tie", False),
        **c.get("top", {}),
    )


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
        out = model(
            input_ids=torch.as_tensor(batch["input_ids"]).long(),
            attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
            pixel_values=torch.as_tensor(pv) if len(pv) else None,
            **kw,
        )
    return out.logits.float().numpy()


@nnx.jit
def forward(model, ids, mask, pixels):
    return model(ids, mask, pixels)


def max_diff_real(a, b, mask):
    m = np.asarray(mask).astype(bool)
    return float(np.max(np.abs(np.asarray(a)[m] - np.asarray(b)[m])))


ROWS = [[3, "img", 2], [2, "img", 1, "img", 3], [6]]  # one image, two images, text only


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


def test_scalar_head_and_remat(pair):
    """score() reads transformers' final hidden state at each row's last real token; remat changes nothing."""
    import torch

    _, tm, _, path = pair
    ours = models.load_pretrained(path, scalar_head=True, remat=True)
    batch = make_batch(ours.config, ROWS, pad_side="right", seed=9)
    with torch.no_grad():
        h = tm.model(
            input_ids=torch.as_tensor(batch["input_ids"]).long(),
            attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
            pixel_values=torch.as_tensor(batch["pixel_values"]),
        ).last_hidden_state.numpy()
    last = batch["attention_mask"].sum(1) - 1
    want = h[np.arange(len(last)), last] @ np.asarray(ours.score_head.kernel[...])[:, 0]
    got = nnx.jit(lambda m, i, a, p: m.score(i, a, p))(
        ours, batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    )
    assert np.abs(np.asarray(got) - want).max() <= TOL
    ref = torch_logits(tm, batch, position_ids=False)
    assert (
        max_diff_real(
            forward(ours, batch["input_ids"], batch["attention_mask"], batch["pixel_values"]),
            ref,
            batch["attention_mask"],
        )
        <= TOL
    )


# ------------------------------------------------------------------ KV cache: greedy and sampled decoding
@nnx.jit(static_argnames=("max_len",))
def prefill(model, ids, mask, pixels, max_len):
    """The prompt into a fresh cache of max_len slots -> (logits of the last column [B, V], cache)."""
    logits, cache = model(ids, mask, pixels, cache=model.init_cache(ids.shape[0], max_len), cache_index=0)
    return logits[:, -1], cache


@nnx.jit
def decode_step(model, tok, cache, index):
    """One token per row at (traced) slot `index`; positions continue the real tokens in the cache."""
    logits, cache = model(tok[:, None], jnp.ones_like(tok)[:, None], cache=cache, cache_index=index)
    return logits[:, -1], cache


def no_image_token(logits):
    """Logits [..., V] with the image placeholder banned (a sampler never emits it)."""
    return jnp.asarray(logits).at[..., IMAGE].set(-1e9)


def cached_decode(model, batch, steps, key=None):
    """Greedy (key None: plain argmax) or temperature-1 sampled tokens [B, steps] (image token banned)
    and their log-probs [B, steps] from a prefill and `steps` - 1 one-token decode steps (left-padded prompt)."""
    ids = batch["input_ids"]
    T = ids.shape[1]
    logits, cache = prefill(model, ids, batch["attention_mask"], batch["pixel_values"], T + steps)
    toks, logps = [], []
    for i in range(steps):
        if key is None:
            tok = jnp.argmax(logits, axis=-1)
        else:
            logits = no_image_token(logits)
            key, sub = jax.random.split(key)
            tok = jax.random.categorical(sub, logits, axis=-1)
        toks.append(tok)
        logps.append(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=1)[:, 0])
        if i + 1 < steps:
            logits, cache = decode_step(model, tok.astype(jnp.int32), cache, jnp.int32(T + i))
    return np.asarray(jnp.stack(toks, 1)), np.asarray(jnp.stack(logps, 1))


GEN_ROWS = [[3, "img", 2], [1, "img", 1, "img", 4]]
STEPS = 6


def test_greedy_tokens_equal_transformers_generate(pair):
    import torch
    import transformers

    name, tm, ours, _ = pair
    batch = make_batch(ours.config, GEN_ROWS, pad_side="left", seed=2)
    gen_cfg = transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=STEPS,
        min_new_tokens=STEPS,
        eos_token_id=None,
        pad_token_id=PAD,
        bos_token_id=BOS,
    )
    with torch.no_grad():
        ref = tm.generate(
            input_ids=torch.as_tensor(batch["input_ids"]).long(),
            attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
            pixel_values=torch.as_tensor(batch["pixel_values"]),
            generation_config=gen_cfg,
        )
    ref = ref[:, batch["input_ids"].shape[1] :].numpy()
    toks, _ = cached_decode(ours, batch, STEPS)
    print(f"{name}: greedy {toks.tolist()}")
    assert ref.shape == (2, STEPS)
    np.testing.assert_array_equal(toks, ref)
    assert len(np.unique(toks)) > 1  # a decode that repeats one token would be a weak test


def test_sampled_logprobs_equal_teacher_forcing(pair):
    import torch

    name, tm, ours, _ = pair
    batch = make_batch(ours.config, GEN_ROWS, pad_side="left", seed=3)
    toks, logps = cached_decode(ours, batch, STEPS, key=jax.random.key(7))
    T = batch["input_ids"].shape[1]
    full = dict(
        input_ids=np.concatenate([batch["input_ids"], toks.astype(np.int32)], axis=1),
        attention_mask=np.concatenate([batch["attention_mask"], np.ones_like(toks, np.int32)], axis=1),
        pixel_values=batch["pixel_values"],
    )

    def teacher_forced(logits):
        lp = jax.nn.log_softmax(no_image_token(logits[:, T - 1 : -1]), axis=-1)
        return np.asarray(jnp.take_along_axis(lp, jnp.asarray(toks)[..., None], axis=-1)[..., 0])

    ours_tf = teacher_forced(forward(ours, full["input_ids"], full["attention_mask"], full["pixel_values"]))
    with torch.no_grad():
        torch_tf = teacher_forced(torch_logits(tm, full))
    d_self, d_torch = np.abs(logps - ours_tf).max(), np.abs(logps - torch_tf).max()
    print(f"{name}: sampled {toks.tolist()}, |cached - teacher forced| {d_self:.1e}, vs torch {d_torch:.1e}")
    assert d_self <= 1e-5 and d_torch <= TOL


def test_positions_for_prefill_and_decode():
    """rope_index: transformers' generate positions (cumsum of the mask - 1, 0 on padding); slot +
    rope_deltas (decode_position_ids) continues each row's real tokens, left or right padding."""
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int32)
    pos, deltas = llava.rope_index(np.zeros_like(mask), mask)
    want = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)
    np.testing.assert_array_equal(np.asarray(pos), want)
    np.testing.assert_array_equal(
        np.asarray(llava.decode_position_ids(np.array([5, 6]), deltas)), mask.sum(1)[:, None] + np.array([[0, 1]])
    )
    np.testing.assert_array_equal(
        np.asarray(llava.default_position_ids(np.ones((3, 2)), prev=mask.sum(1))),
        mask.sum(1)[:, None] + np.array([[0, 1]]),
    )


# ------------------------------------------------------------------ 8 fake devices
@pytest.fixture(scope="module")
def gqa_folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llava_gqa_sharded"))
    build_torch("gqa", seed=4).save_pretrained(path)
    return path


def test_sharded_forward_equals_one_device(gqa_folder):
    assert jax.device_count() == 8
    one = models.load_pretrained(gqa_folder)
    mesh = S.make_mesh((2, 2, 2))
    sharded = models.load_pretrained(gqa_folder, mesh=mesh)
    q = sharded.model.layers[0].self_attn.q_proj.kernel[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # really split
    fc1 = sharded.visual.vision_tower.encoder.layers[0].mlp.fc1.kernel[...]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    batch = make_batch(
        one.config, [[3, "img", 2], [2, "img", 1, "img", 3], [6], [1, "img", 5]], pad_side="left", seed=5
    )
    placed = S.shard_batch(batch, mesh)
    assert placed["input_ids"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    want = np.asarray(forward(one, batch["input_ids"], batch["attention_mask"], batch["pixel_values"]))
    got = forward(sharded, placed["input_ids"], placed["attention_mask"], placed["pixel_values"])
    assert len(got.sharding.device_set) == 8
    diff = max_diff_real(got, want, batch["attention_mask"])
    print(f"sharded (2, 2, 2) vs one device: max abs diff {diff:.1e}")
    assert diff <= 1e-5


# ------------------------------------------------------------------ Hugging Face IO
def spread_ours(model, seed):
    """O(0.15) random weights over our model (norm weights 1 + 0.1 noise): the initialiser's 0.02
    makes near-constant logits, a weak comparison."""
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            v = node.get_value()
            noise = rng.standard_normal(v.shape).astype(np.float32)
            norm = v.ndim == 1 and path[-1] == "weight" and any("norm" in str(p) or "layrnorm" in str(p) for p in path)
            node.set_value(jnp.asarray(1.0 + 0.1 * noise if norm else 0.15 * noise, v.dtype))
    return model


def params_of(model):
    return {
        ".".join(map(str, p)): np.asarray(n.get_value()) for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Param)
    }


@pytest.mark.parametrize("name", ["mha_tied", "full_multilayer"])
def test_save_load_round_trips(name, tmp_path):
    import torch
    import transformers

    ours = spread_ours(models.from_config(hf_config(name).to_dict(), scalar_head=True), seed=6)
    models.save_pretrained(ours, tmp_path)
    back = models.load_pretrained(tmp_path, scalar_head=True)  # ours -> ours: exact
    a, b = params_of(ours), params_of(back)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    batch = make_batch(ours.config, ROWS, pad_side="left", seed=7)
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    want = np.asarray(forward(ours, *args))
    np.testing.assert_array_equal(np.asarray(forward(back, *args)), want)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    np.testing.assert_array_equal(
        np.asarray(back.score(ids, mask, batch["pixel_values"])),
        np.asarray(ours.score(ids, mask, batch["pixel_values"])),
    )
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model_type"] == "llava"
    tm = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path), attn_implementation="eager")
    assert tm.config.tie_word_embeddings == (name == "mha_tied")
    diff = max_diff_real(want, torch_logits(tm.eval(), batch), batch["attention_mask"])  # ours -> transformers
    print(f"{name}: ours -> transformers max abs diff {diff:.1e}")
    assert diff <= TOL
    with torch.no_grad():  # weights, not only logits
        w = tm.model.language_model.layers[0].self_attn.q_proj.weight.numpy()
    np.testing.assert_array_equal(w, a["model.layers.0.self_attn.q_proj.kernel"].T)


def test_reads_state_dict_and_legacy_key_names(gqa_folder, tmp_path):
    """transformers' state_dict names and the llava-hf hub's `vision_tower.vision_model.*` load the same."""
    ref = params_of(models.load_pretrained(gqa_folder))
    tensors = load_file(os.path.join(gqa_folder, "model.safetensors"))
    renames = [
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
    ]
    out = {}
    for k, v in tensors.items():
        for old, new in renames:
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        else:
            k = "vision_tower.vision_model." + k[len("vision_tower.") :]
        out[k] = v
    assert any(k.startswith("vision_tower.vision_model.") for k in out) and "lm_head.weight" in out
    save_file(out, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(gqa_folder, "config.json")) as f, open(tmp_path / "config.json", "w") as g:
        g.write(f.read())
    got = params_of(models.load_pretrained(tmp_path))
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    del out["model.language_model.norm.weight"]
    save_file(out, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(models.CheckpointError, match="language_model.model.norm.weight"):
        models.load_pretrained(tmp_path)


def test_config_parsing():
    import transformers

    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    }
    hub = {
        "model_type": "llava",
        "image_token_index": 32000,
        "text_config": {
            "model_type": "llama",
            "vocab_size": 32064,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096,
        },
        "vision_config": vision,
    }
    cfg = llava.parse_hf_config(hub)  # llava-hf/llava-1.5-7b-hf's config.json: the rest are defaults
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.vocab_size) == (4096, 32, 32, 32064)
    assert (cfg.vision_depth, cfg.vision_hidden_size, cfg.image_size, cfg.patch_size) == (24, 1024, 336, 14)
    assert (cfg.num_patches, cfg.image_tokens, cfg.vision_feature_layer) == (576, 576, (-2,))
    assert not cfg.tie_word_embeddings and cfg.image_token_id == 32000 and cfg.rms_norm_eps == 1e-5
    shape = nnx.eval_shape(lambda: models.from_config(hub))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(shape, nnx.Param)))
    assert n == 7_063_427_072  # llava-1.5-7b-hf's parameter count (vocab 32064)
    # sparse dicts: the defaults transformers fills in
    for sparse in (dict(hub, vision_config={"model_type": "clip_vision_model"}), {"model_type": "llava"}):
        t = transformers.LlavaConfig(**{k: v for k, v in sparse.items() if k != "model_type"})
        c = llava.parse_hf_config(sparse)
        tv, tt = t.vision_config, t.text_config
        assert (c.vision_hidden_size, c.vision_depth, c.image_size, c.patch_size, c.vision_intermediate_size) == (
            tv.hidden_size,
            tv.num_hidden_layers,
            tv.image_size,
            tv.patch_size,
            tv.intermediate_size,
        )
        assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size, c.rms_norm_eps) == (
            tt.hidden_size,
            tt.intermediate_size,
            tt.num_hidden_layers,
            tt.vocab_size,
            tt.rms_norm_eps,
        )
    with pytest.raises(ValueError, match="only llama"):
        llava.parse_hf_config(dict(hub, text_config={"model_type": "mistral"}))
    with pytest.raises(ValueError, match="rope type"):
        llava.parse_hf_config(dict(hub, text_config={"rope_parameters": {"rope_type": "llama3"}}))
    with pytest.raises(models.UnsupportedModelError, match="llava"):
        models.from_config({"model_type": "llava_next"})


# ------------------------------------------------------------------ prompt and images
WORDS = "what is in the image a red square blue circle it".split()


def tiny_tokenizer():
    """A word-level tokenizer (offline) whose <image> is IMAGE and that prepends <s> (BOS)."""
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tmodels
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<pad>": PAD,
        "<s>": BOS,
        "</s>": EOS,
        "<unk>": 3,
        "USER": 4,
        "ASSISTANT": 5,
        ":": 6,
        "?": 7,
        "<image>": IMAGE,
    }
    vocab.update({w: 10 + i for i, w in enumerate(WORDS)})
    tok = Tokenizer(tmodels.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<image>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def test_prompt_and_images_match_llava_processor(gqa_folder):
    import torch
    import transformers
    from PIL import Image

    from grlhfv_jax.models.llava import processing as P

    ours = models.load_pretrained(gqa_folder)
    cfg = ours.config
    tok = tiny_tokenizer()
    proc = transformers.LlavaProcessor(
        image_processor=P.image_processor(cfg),
        tokenizer=tok,  # llava-hf's settings
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=P.CHAT_TEMPLATE,
    )
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "a red square"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a blue circle"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
    ]
    text = P.chat_prompt(messages)
    assert text == proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("USER: <image>\nwhat is it? ASSISTANT:")
    rng = np.random.default_rng(8)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 30), (25, 60))]
    ref = proc(text=text, images=images, return_tensors="np")
    ids = P.encode_prompt(tok, text, cfg)
    np.testing.assert_array_equal(ids, ref["input_ids"][0])
    assert int((ids == IMAGE).sum()) == 2 * cfg.image_tokens == 2 * (cfg.image_size // cfg.patch_size) ** 2
    pixels = P.preprocess_images(images, cfg)
    assert pixels.shape == (2,) + cfg.pixel_shape
    np.testing.assert_array_equal(pixels, ref["pixel_values"])
    tm = transformers.LlavaForConditionalGeneration.from_pretrained(gqa_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        want = tm(input_ids=torch.as_tensor(ids)[None].long(), pixel_values=torch.as_tensor(pixels)).logits.numpy()
    got = np.asarray(forward(ours, ids[None], np.ones_like(ids)[None], pixels))
    assert np.abs(got - want).max() <= TOL
    with pytest.raises(ValueError, match="image token mismatch"):
        ours(ids[None], None, pixels[:1])
    emb = ours.encode_images(pixels)  # encoded once, padded (as the engine buckets them)
    padded = jnp.concatenate([emb, jnp.ones((5, emb.shape[1]), emb.dtype)])
    np.testing.assert_allclose(np.asarray(ours(ids[None], image_embeds=padded)), got, atol=1e-5, rtol=0)


def test_dry_run_knows_llava_shapes():
    """`dry_run.model_shape` (what --dry_run plans with) on llava-1.5-7b's config: the parameter counts of
    transformers' own model (built on the meta device: no memory) and the shapes of config.json."""
    import ml_collections
    import torch
    import transformers

    from grlhfv_jax import dry_run

    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
    }
    hub = {
        "model_type": "llava",
        "image_token_index": 32000,
        "text_config": {"model_type": "llama", "vocab_size": 32064, "rms_norm_eps": 1e-5},
        "vision_config": vision,
    }
    spec = ml_collections.ConfigDict(
        dict(
            path="",
            hf_config=hub,
            dtype="bfloat16",
            param_dtype="float32",
            remat=True,
            remat_policy="nothing",
            logits_chunk=0,
            vision_block=None,
            vision_chunk=0,
        )
    )
    m = dry_run.model_shape(spec)
    with torch.device("meta"):
        tm = transformers.LlavaForConditionalGeneration(
            transformers.LlavaConfig(**{k: v for k, v in hub.items() if k != "model_type"})
        )
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert m.params == count(tm) == 7_063_427_072
    assert m.vision_params == count(tm.model.vision_tower) + count(tm.model.multi_modal_projector)
    assert (m.layers, m.hidden, m.intermediate, m.heads, m.kv_heads, m.head_dim, m.vocab) == (
        32,
        4096,
        11008,
        32,
        32,
        128,
        32064,
    )
    assert (m.vision_depth, m.vision_hidden, m.vision_heads, m.vision_intermediate) == (24, 1024, 16, 4096)
