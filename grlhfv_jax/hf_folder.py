"""A live model -> a complete Hugging Face folder: weights and config.json (`models.save_pretrained`,
the special ids of the run's tokenizer), the tokenizer with its chat template, preprocessor_config.json
and generation_config.json (`write_folder`); a finished folder copied with the same assets
(`copy_folder`). Every stage's export (`checkpoint.export_hf`) and the export command line
(`grlhfv_jax.export`, which holds the folder's description) write through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class ExportError(RuntimeError):
    """Something the export needs is missing; the message names the file or stage."""


def special_ids(codec) -> dict:
    """The special token ids of the codec's tokenizer, as config.json and generation_config.json
    spell them. bos: the tokenizer's bos token, else `<|endoftext|>` (Qwen2's tokenizer has no bos
    token; its config.json names `<|endoftext|>`, 151643 there); eos: `<|im_end|>`, where an
    assistant turn ends (the codec's, our engine's stop token); pad: the codec's pad id."""
    tok = codec.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
    ids = dict(codec.special_ids())
    ids["bos_token_id"] = bos
    return {k: int(v) for k, v in ids.items()}


def _check_vocab(vocab_size: int, codec, where: str) -> None:
    n = len(codec.tokenizer)
    if int(vocab_size) < n:
        raise ExportError(
            f"{where}: the model's vocabulary ({vocab_size}) is smaller than the tokenizer's ({n}): "
            "not the tokenizer this model was trained with"
        )


def write_assets(path: str, codec) -> None:
    """Writes the tokenizer (with its chat template), preprocessor_config.json and
    generation_config.json of `codec` into the folder `path` (created)."""
    from grlhfv_jax.data.tokenizer import CHAT_TEMPLATE

    os.makedirs(path, exist_ok=True)
    tok = codec.tokenizer
    tok.save_pretrained(path)
    if not getattr(tok, "chat_template", None):  # renders what processing.chat_prompt builds without one
        with open(os.path.join(path, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(CHAT_TEMPLATE)
    proc = codec.prompts.processor_config(codec.image_processor)  # the family's preprocessor_config.json
    with open(os.path.join(path, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(proc, f, indent=2, sort_keys=True)
    ids = special_ids(codec)
    gen = {k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    with open(os.path.join(path, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(gen, f, indent=2, sort_keys=True)


def _is_remote(path: str) -> bool:
    return "://" in os.fspath(path)


def publish(local: str, path: str) -> None:
    """Copies the files of folder `local` into `path` (created), any etils.epath path (gs://...)."""
    from etils import epath

    dst = epath.Path(path)
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(local)):
        with open(os.path.join(local, name), "rb") as src, (dst / name).open("wb") as out:
            shutil.copyfileobj(src, out, 64 << 20)


@contextlib.contextmanager
def _staged(path: str):
    """A local folder to write `path`'s files in: `path` itself, or for a remote path (gs://) a
    temporary folder `publish`ed there at the end (transformers and safetensors write local files)."""
    if not _is_remote(path):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp
        publish(tmp, path)


def write_folder(model, path: str, codec, *, dtype=None) -> str:
    """`model` as a complete Hugging Face folder at `path` (created; files there are overwritten;
    a gs:// path is written locally, then copied): weights and config.json
    (`models.save_pretrained`, special ids of the codec's tokenizer) plus `write_assets`.
    dtype: on-disk dtype of the weights (default: each parameter's own)."""
    from grlhfv_jax.models import save_pretrained

    _check_vocab(model.config.vocab_size, codec, path)
    with _staged(path) as local:
        save_pretrained(model, local, dtype=dtype, special_ids=special_ids(codec))
        write_assets(local, codec)
    return path


def copy_folder(src: str, path: str, codec) -> str:
    """A finished HF folder `src` (weights + config.json, e.g. a stage's output) copied to `path`
    with config.json's special ids set to the codec's tokenizer's and the assets written."""
    from grlhfv_jax.models import family, read_config_json

    hf = read_config_json(src)
    fam = family(hf.get("model_type"))
    text = dict(hf, **(hf.get("text_config") or {}))
    _check_vocab(text.get("vocab_size", 0), codec, src)
    files = [f for f in os.listdir(src) if f in WEIGHT_FILES or (f.startswith("model-") and f.endswith(".safetensors"))]
    if not any(f in WEIGHT_FILES for f in files):
        raise ExportError(f"{src} has config.json but no {' or '.join(WEIGHT_FILES)}")
    os.makedirs(path, exist_ok=True)
    for f in files:
        shutil.copyfile(os.path.join(src, f), os.path.join(path, f))
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(fam.with_special_ids(hf, special_ids(codec)), f, indent=2, sort_keys=True)
    write_assets(path, codec)
    return path
