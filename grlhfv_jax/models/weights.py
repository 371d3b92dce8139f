"""Hugging Face safetensors <-> NNX parameters, with the hub's key names, for any family of
`models.families` (the family gives the names and the on-disk shapes: `hub_key`, `hub_shape`).
Kernels are stored [out, in] (ours [in, out]); every tensor is read one at a time.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .families import family

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD = 5 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint folder that does not match the model (missing / unexpected / misshaped tensor,
    corrupt or missing file)."""


def read_config_json(path: str) -> dict:
    fn = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(fn):
        raise FileNotFoundError(f"no config.json in {path!r}")
    with open(fn) as f:
        return json.load(f)


def param_table(model):
    """[(hub keys, nnx.Param, is_kernel, stacked)] for every parameter of the model: one hub key,
    or for a parameter stacked on a leading layer axis (the family's ``STACKED_LAYERS`` path with
    ``config.scan_layers``, ``STACKED_VISION`` with ``config.scan_vision``) L keys, key i for slot i
    (``model.layers.{i}.self_attn.q_proj.weight``, ``visual.blocks.{i}.attn.qkv.weight``)."""
    fam = family(model.config.model_type)
    prefixes = [
        tuple(getattr(fam, name, ()))
        for name, flag in (("STACKED_LAYERS", "scan_layers"), ("STACKED_VISION", "scan_vision"))
        if getattr(model.config, flag, False)
    ]
    out = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param):
            prefix = next((p for p in prefixes if p and tuple(path[: len(p)]) == p), ())
            stacked = bool(prefix)
            if stacked:
                rest = tuple(path[len(prefix) :])
                keys = [fam.hub_key(prefix + (i,) + rest) for i in range(node.get_value().shape[0])]
            else:
                keys = [fam.hub_key(path)]
            out.append((keys, node, path[-1] == "kernel", stacked))
    return out


def _to_ours(arr, is_kernel):
    return arr.reshape(arr.shape[0], -1).T if is_kernel else arr


def _to_hf(arr, key, is_kernel, cfg):
    if not is_kernel:
        return arr
    return np.ascontiguousarray(arr.T.reshape(family(cfg.model_type).hub_shape(key, arr.shape, is_kernel, cfg)))


# --------------------------------------------------------------------------- reading
def _open(fn):
    try:
        return safe_open(fn, framework="np")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated safetensors file {fn!r}: {e}") from e


def _checkpoint_files(path):
    """{hub key: file} for a folder with model.safetensors or a sharded index."""
    index = os.path.join(path, INDEX_FILE)
    single = os.path.join(path, SINGLE_FILE)
    if os.path.exists(index):
        with open(index) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"bad index file {index!r}: {e}") from e
        for shard in sorted(set(weight_map.values())):
            if not os.path.exists(os.path.join(path, shard)):
                raise CheckpointError(f"missing shard file {shard!r} listed in {index!r}")
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    if os.path.exists(single):
        with _open(single) as f:
            return {k: single for k in f.keys()}
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path!r}")


def _canonical(key, aliases):
    for old, new in aliases:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def load_pretrained(
    path,
    *,
    dtype=jnp.float32,
    mesh=None,
    scalar_head=False,
    rngs=None,
    param_dtype=None,
    remat=False,
    vision_block=0,
    remat_policy="nothing",
    logits_chunk=0,
    vision_chunk=0,
    scan_layers=False,
    scan_vision=False,
):
    """Loads an HF folder of a supported family (config.json + model.safetensors or a sharded index).

    dtype: compute dtype; param_dtype: parameter dtype (default: dtype; e.g. bf16 compute with
    float32 master weights: dtype=bf16, param_dtype=float32). Tensors are read one at a time and
    converted (bf16 or fp32 on disk). With `mesh`, each is placed with
    `grlhfv_jax.sharding.shard_array(x, param.logical_axes, mesh)` as it is read.
    scalar_head: add `score` ([1, hidden] on disk); initialised (normal, std 0.02) when absent.
    remat, remat_policy, logits_chunk, vision_block, vision_chunk, scan_layers, scan_vision: runtime
    choices (`VLConfig`); with scan_layers (scan_vision) the hub's per-layer (per-block) tensors fill
    the slots of the stacked ones.
    """
    path = os.fspath(path)
    hf = read_config_json(path)
    fam = family(hf.get("model_type"))
    cfg = fam.parse_config(
        hf,
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        remat=remat,
        vision_block=int(vision_block),
        remat_policy=remat_policy,
        logits_chunk=int(logits_chunk),
        vision_chunk=int(vision_chunk),
        scan_layers=bool(scan_layers),
        scan_vision=bool(scan_vision),
    )
    model = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), scalar_head=scalar_head))
    files = {_canonical(k, fam.HUB_ALIASES): (k, fn) for k, fn in _checkpoint_files(path).items()}
    table = param_table(model)
    wanted = {k for keys, _, _, _ in table for k in keys}
    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(k for k in files if k not in wanted and k not in ignorable)
    if unexpected:
        hint = " (load with scalar_head=True to read 'score.weight')" if "score.weight" in unexpected else ""
        raise CheckpointError(f"unexpected tensor(s) in {path!r}: {unexpected[:10]}{hint}")
    missing = sorted(k for k in wanted if k not in files and k != "score.weight")
    if missing:
        raise CheckpointError(f"missing tensor(s) in {path!r}: {missing[:10]}")
    shard = None
    if mesh is not None:
        from grlhfv_jax.sharding import shard_array as shard
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    handles = {}
    try:
        for keys, param, is_kernel, stacked in table:
            shape = param.get_value().shape
            arr = np.empty(shape, param.get_value().dtype)
            for i, key in enumerate(keys):
                slot = (i,) if stacked else ()
                arr[slot] = _read(key, shape[len(slot) :], is_kernel, files, handles, fam, cfg, rngs)
            axes = getattr(param, "logical_axes", None) or (None,) * arr.ndim
            param.set_value(shard(arr, axes, mesh) if shard is not None else jnp.asarray(arr))
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)
    if mesh is not None:
        from grlhfv_jax.sharding import set_activation_mesh

        set_activation_mesh(model, mesh)
    return model


def _read(key, shape, is_kernel, files, handles, fam, cfg, rngs):
    """Hub tensor `key` in our layout (`shape`; a fresh normal(0.02) scalar head when absent);
    `handles` caches the open files."""
    if key not in files:  # fresh scalar head
        return np.asarray(0.02 * jax.random.normal(rngs.params(), shape, jnp.float32))
    want = fam.hub_shape(key, shape, is_kernel, cfg)
    disk_key, fn = files[key]
    if fn not in handles:
        handles[fn] = _open(fn).__enter__()
    try:
        arr = handles[fn].get_tensor(disk_key)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated safetensors file {fn!r} (tensor {disk_key!r}): {e}") from e
    if tuple(arr.shape) != want:
        raise CheckpointError(
            f"shape mismatch for tensor {disk_key!r} in {fn!r}: checkpoint "
            f"{list(arr.shape)}, model expects {list(want)}"
        )
    return _to_ours(arr, is_kernel)


# --------------------------------------------------------------------------- writing
def _parse_size(s):
    if s is None:
        return DEFAULT_MAX_SHARD
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?i?B)\s*", str(s), re.I)
    if not m:
        raise ValueError(f"bad max_shard_size {s!r}; use bytes or e.g. '2GB'")
    unit = m.group(2).upper()
    mult = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}[unit]
    return int(float(m.group(1)) * mult)


_DTYPE_NAMES = {np.dtype(jnp.bfloat16): "bfloat16", np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def save_pretrained(model, path, *, dtype=None, max_shard_size=None, special_ids=None):
    """Writes config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index when
    larger than max_shard_size, default 5 GiB) with the hub's key names; transformers'
    `from_pretrained` loads it. dtype: on-disk dtype (default: each parameter's own).
    special_ids: {bos_token_id, eos_token_id, pad_token_id, image_token_id, ...} of the tokenizer
    shipped beside the weights, written into config.json (the family's `with_special_ids`; see
    `grlhfv_jax.export`); None: the model config's as they are."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    cfg = model.config
    tensors = {}
    for keys, param, is_kernel, stacked in param_table(model):
        arr = np.asarray(jax.device_get(param.get_value()))
        if dtype is not None:
            arr = arr.astype(dtype)
        for i, key in enumerate(keys):
            tensors[key] = _to_hf(arr[i] if stacked else arr, key, is_kernel, cfg)
    disk_dtype = np.dtype(dtype) if dtype is not None else next(iter(tensors.values())).dtype
    hf = dict(cfg.hf_config)
    if special_ids is not None:
        hf = family(cfg.model_type).with_special_ids(hf, special_ids)
    hf["dtype"] = _DTYPE_NAMES.get(disk_dtype, str(disk_dtype))
    hf.pop("torch_dtype", None)
    if isinstance(hf.get("text_config"), dict):
        hf["text_config"] = {k: v for k, v in hf["text_config"].items() if k not in ("dtype", "torch_dtype")}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    limit = _parse_size(max_shard_size)
    shards, cur, size = [], {}, 0
    for key in sorted(tensors):
        nbytes = tensors[key].nbytes
        if cur and size + nbytes > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[key] = tensors[key]
        size += nbytes
    shards.append(cur)
    meta = {"format": "pt"}
    for old in (SINGLE_FILE, INDEX_FILE):
        if os.path.exists(os.path.join(path, old)):
            os.remove(os.path.join(path, old))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, SINGLE_FILE), metadata=meta)
        return
    weight_map = {}
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(path, name), metadata=meta)
        weight_map.update({k: name for k in sh})
    total = sum(t.nbytes for t in tensors.values())
    with open(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
