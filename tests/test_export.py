"""grlhfv_jax.export: the folder it writes loads in transformers (tokenizer with chat template, image
processor, model) and greedy-generates what our engine generates; config ids are the tokenizer's;
the command line on a tiny run folder (stage output, checkpoint, missing stage).

AutoProcessor is not tested: transformers' Qwen2VLProcessor needs a video processor, which needs
torchvision, not installed here. Its two halves (AutoTokenizer with the chat template,
AutoImageProcessor) are, and the prompt is built from them as the processor would.
"""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from flax import nnx  # noqa: E402

import tiny_models as tm  # noqa: E402  (tests/ is on sys.path)
from grlhfv_jax import encoding, export, models, processing, roles  # noqa: E402
from grlhfv_jax.checkpoint import Checkpointer, export_hf, exported_summary  # noqa: E402
from grlhfv_jax.data.tokenizer import train_tokenizer  # noqa: E402

CORPUS, IMAGE = list(tm.SHAPES_CORPUS), dict(tm.IMAGE_SETTINGS)  # copies: each module its own
QUESTION = "What colour is the shape?"
NEW = 8
tiny_hf = tm.tiny_hf_dict  # tied embeddings, 512 positions (configs/demo.py's)


def run_config():
    """The config a tiny run folder holds (RUN/config.json): what the export reads of it."""
    import ml_collections

    return ml_collections.ConfigDict(
        dict(stages=["data", "policy_rl"], image=dict(IMAGE), model=dict(policy=dict(hf_config=tiny_hf())))
    )


def image(seed=0, h=60, w=90):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run folder: config.json, data_paths.json + the data stage's tokenizer; a random policy."""
    workdir = str(tmp_path_factory.mktemp("run"))
    tok_dir, _ = train_tokenizer(CORPUS, os.path.join(workdir, "data", "tokenizer"), vocab_size=320)
    with open(os.path.join(workdir, "data_paths.json"), "w") as f:
        json.dump({"tokenizer_dir": tok_dir}, f)
    config = run_config()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    codec = encoding.Codec.from_dirs(tok_dir, config.image)
    hf = roles.model_config(config.model.policy, codec)
    model = models.from_config(hf, rngs=nnx.Rngs(3))
    tm.spread(model, np.random.default_rng(3))
    return workdir, codec, model


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory):
    _, codec, model = run
    return export.write_folder(model, str(tmp_path_factory.mktemp("hf")), codec)


def test_folder_files(folder):
    names = set(os.listdir(folder))
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        assert f in names, f


def test_config_special_ids_are_the_tokenizers(run, folder):
    import transformers

    _, codec, _ = run
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    c = tok.convert_tokens_to_ids
    cfg = transformers.AutoConfig.from_pretrained(folder)
    text = cfg.get_text_config()
    assert text.vocab_size == len(tok) < 1000
    assert text.bos_token_id == c("<|endoftext|>")  # Qwen2's bos (no bos token in the tokenizer)
    assert text.eos_token_id == c("<|im_end|>") == codec.eos_id
    assert text.pad_token_id == tok.pad_token_id == codec.pad_id
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (
        c("<|image_pad|>"),
        c("<|video_pad|>"),
        c("<|vision_start|>"),
        c("<|vision_end|>"),
    )
    ids = [
        text.bos_token_id,
        text.eos_token_id,
        text.pad_token_id,
        cfg.image_token_id,
        cfg.video_token_id,
        cfg.vision_start_token_id,
        cfg.vision_end_token_id,
    ]
    assert max(ids) < len(tok)
    gen = transformers.GenerationConfig.from_pretrained(folder)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (text.bos_token_id, codec.eos_id, codec.pad_id)
    # our loader reads the same ids back
    m = models.load_pretrained(folder)
    assert (m.config.image_token_id, m.config.eos_token_id, m.config.pad_token_id) == (
        cfg.image_token_id,
        codec.eos_id,
        codec.pad_id,
    )


def test_tokenizer_chat_template(run, folder):
    import transformers

    _, codec, _ = run
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == processing.chat_prompt(QUESTION) == processing.chat_prompt(QUESTION, tokenizer=codec.tokenizer)
    assert tok.encode(text, add_special_tokens=False) == codec.tokenizer.encode(text, add_special_tokens=False)


def test_image_processor(run, folder):
    import transformers

    _, codec, _ = run
    proc = transformers.AutoImageProcessor.from_pretrained(folder)
    for seed, (h, w) in enumerate([(60, 90), (200, 120), (30, 30)]):
        im = processing.load_image(image(seed, h, w))
        got = proc(images=[im], return_tensors="np")
        want = codec.image_processor(images=[im], return_tensors="np")
        np.testing.assert_array_equal(np.asarray(got["image_grid_thw"]), np.asarray(want["image_grid_thw"]))
        np.testing.assert_allclose(np.asarray(got["pixel_values"]), np.asarray(want["pixel_values"]), atol=1e-6)
    with open(os.path.join(folder, "preprocessor_config.json")) as f:
        cfg = json.load(f)
    assert (cfg["min_pixels"], cfg["max_pixels"], cfg["patch_size"], cfg["merge_size"], cfg["temporal_patch_size"]) == (
        IMAGE["min_pixels"],
        IMAGE["max_pixels"],
        14,
        2,
        2,
    )


def _hf_inputs(folder, im):
    """What Qwen2VLProcessor would give, from the folder's tokenizer and image processor alone."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    proc = transformers.AutoImageProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    img = proc(images=[processing.load_image(im)], return_tensors="np")
    n = int(np.prod(img["image_grid_thw"][0])) // proc.merge_size**2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    return dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == tok.convert_tokens_to_ids("<|image_pad|>")).long(),
        pixel_values=torch.as_tensor(np.asarray(img["pixel_values"])),
        image_grid_thw=torch.as_tensor(np.asarray(img["image_grid_thw"]), dtype=torch.long),
    )


def test_transformers_generates_our_engines_tokens(run, folder):
    import torch
    import transformers

    from grlhfv_jax.rollout import engine

    _, codec, model = run
    hf = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    im = image(1, 80, 100)
    kw = _hf_inputs(folder, im)
    batch = processing.collate([codec.example(QUESTION, im)], pad_id=codec.pad_id, side="left")
    np.testing.assert_array_equal(batch["input_ids"][0], kw["input_ids"][0].numpy())
    out = engine.generate(
        model, batch, max_new_tokens=NEW, temperature=0.0, eos_token_id=codec.eos_id, pad_token_id=codec.pad_id
    )
    with torch.no_grad():  # generation_config.json: greedy by default, eos <|im_end|>, pad
        ref = hf.generate(**kw, max_new_tokens=NEW, do_sample=False)[0, kw["input_ids"].shape[1] :].numpy()
    n = int(np.asarray(out.lengths)[0])
    assert n == len(ref) or ref[n:].tolist() == [codec.pad_id] * (len(ref) - n)
    np.testing.assert_array_equal(np.asarray(out.tokens)[0, :n], ref[:n])
    assert n == NEW and len(set(ref.tolist())) >= 3  # a test of more than one repeated token


def _params(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_weights(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


def test_stage_export_is_complete(run, tmp_path):
    """checkpoint.export_hf with the codec (what every stage calls) writes the same folder."""
    _, codec, model = run
    out = export_hf(model, str(tmp_path / "policy"), summary={"x": 1.0}, codec=codec)
    assert exported_summary(out) == {"x": 1.0}
    for f in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["text_config"]["bos_token_id"] == codec.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_cli_from_stage_output(run, tmp_path):
    workdir, codec, model = run
    export_hf(model, os.path.join(workdir, "dpo", "policy"), codec=codec)  # as the dpo stage ends
    out = str(tmp_path / "out")
    assert export.main(["--workdir", workdir, "--stage", "dpo", "--out", out]) == 0
    _assert_same_weights(models.load_pretrained(out), model)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["image_token_id"] == codec.special_ids()["image_token_id"]
    assert os.path.isfile(os.path.join(out, "preprocessor_config.json"))


def test_cli_from_checkpoint(run, tmp_path):
    """An interrupted policy_rl stage: its latest checkpoint (model + optimizer, as the train loop
    writes it) restored and exported by a subprocess, as a user runs it."""
    import subprocess
    import sys

    import optax

    workdir, codec, model = run
    trained = models.from_config(roles.model_config(run_config().model.policy, codec), rngs=nnx.Rngs(9))
    opt = nnx.Optimizer(trained, optax.adamw(1e-3), wrt=nnx.Param)
    ckpt = Checkpointer(os.path.join(workdir, "policy_rl", "ckpt"), async_save=False)
    ckpt.save(2, trained, opt, extra={"last": {}})
    ckpt.close()
    out = str(tmp_path / "out")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(export.__file__))), os.environ.get("PYTHONPATH", "")]
        ),
    )
    r = subprocess.run(
        [sys.executable, "-m", "grlhfv_jax.export", "--workdir", workdir, "--stage", "policy_rl", "--out", out],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "restored step 2" in r.stdout
    _assert_same_weights(models.load_pretrained(out), trained)
    for f in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    # --checkpoint names the folder directly (the role's model: policy)
    out2 = str(tmp_path / "out2")
    assert (
        export.main(
            [
                "--workdir",
                workdir,
                "--checkpoint",
                os.path.join(workdir, "policy_rl", "ckpt"),
                "--role",
                "policy",
                "--out",
                out2,
            ]
        )
        == 0
    )
    _assert_same_weights(models.load_pretrained(out2), trained)


def test_cli_errors_name_what_is_missing(run, tmp_path, capsys):
    workdir, _, _ = run
    out = str(tmp_path / "out")
    assert export.main(["--workdir", workdir, "--stage", "rm", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "stage 'rm'" in err
    assert os.path.join(workdir, "rm", "rm") in err and os.path.join(workdir, "rm", "ckpt") in err
    assert export.main(["--workdir", workdir, "--stage", "grpo", "--out", out]) == 2
    assert "unknown stage 'grpo'" in capsys.readouterr().err
    assert export.main(["--workdir", workdir, "--stage", "sft", "--role", "rm", "--out", out]) == 2
    assert "no role 'rm'" in capsys.readouterr().err
    assert export.main(["--workdir", str(tmp_path), "--stage", "dpo", "--out", out]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert export.main(["--workdir", workdir, "--checkpoint", str(tmp_path / "nope"), "--out", out]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_remote_path_is_staged_then_copied(run, tmp_path, monkeypatch):
    """A gs:// destination: written to a local temporary folder, then copied through etils.epath
    (here onto a local path taken for a remote one: no bucket in the tests)."""
    from grlhfv_jax import hf_folder

    _, codec, model = run
    monkeypatch.setattr(hf_folder, "_is_remote", lambda path: True)
    out = export.write_folder(model, str(tmp_path / "remote"), codec)
    monkeypatch.undo()
    local = export.write_folder(model, str(tmp_path / "local"), codec)
    assert sorted(os.listdir(out)) == sorted(os.listdir(local))
    for name in os.listdir(local):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(local, name), "rb") as b:
            assert a.read() == b.read(), name


def test_with_special_ids_both_layouts():
    """config.json's ids in the nested layout (text_config) and the hub's old flat one: transformers
    reads the given ids, not its defaults (151643, 151655, ...)."""
    import transformers

    from grlhfv_jax.models.qwen2_vl import with_special_ids

    ids = dict(
        bos_token_id=5,
        eos_token_id=6,
        pad_token_id=5,
        image_token_id=7,
        video_token_id=8,
        vision_start_token_id=9,
        vision_end_token_id=10,
    )
    nested = tiny_hf()
    nested["text_config"]["vocab_size"] = 64
    flat = dict({k: v for k, v in nested.items() if k != "text_config"}, **nested["text_config"])
    for hf in (nested, flat):
        out = with_special_ids(hf, ids)
        assert "bos_token_id" not in hf  # a copy
        cfg = transformers.Qwen2VLConfig(**out)
        text = cfg.get_text_config()
        assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (5, 6, 5)
        assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (
            7,
            8,
            9,
            10,
        )
        vl = models.parse_hf_config(out)
        assert (vl.image_token_id, vl.eos_token_id, vl.pad_token_id, vl.vision_start_token_id) == (7, 6, 5, 9)
