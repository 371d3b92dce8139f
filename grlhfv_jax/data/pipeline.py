"""grain readers for the synthetic world's splits, and the demo tokenizer cache.

    prepare(data_dir, world)                      # TFDS files + tokenizer, once (then cached)
    ds = dataset(data_dir, "grm_train", world, seed=0, num_epochs=2, batch_size=8)
    for batch in ds: ...                          # batch: list of record dicts (see decode_record)
    records = load_records(data_dir, "grm_test_id", world)   # in order, all of this process's share

Records are python dicts; images are uint8 [H, W, 3]; texts are str; `scene` stays a JSON string
(what `world.oracle_score` takes). Batches are lists of dicts: collating (tokenising, padding,
image patches) is processing.py's job.

Sharding (`jax.process_index()` / `jax.process_count()` by default): the records are shuffled as
one process shuffles them, then each process reads only its share: with `batch_size` (the GLOBAL
batch size) process p reads the contiguous block p of `batch_size / process_count` rows of every
batch, so the hosts' blocks, concatenated in process order (`sharding.global_batch`), are the
batches one process reads, in the same order; without it, records p, p + count, ... of the shuffled
stream. `load_records`: records `i` with `i % process_count == process_index`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from grlhfv_jax.data import world as W

COMMON_FIELDS = ("id", "kind", "question", "image", "scene", "heldout")
PAIR_FIELDS = COMMON_FIELDS + (
    "response_1",
    "response_2",
    "overall_response",
    "oracle_1",
    "oracle_2",
    "label_noisy",
    "pair_type",
)
PROMPT_FIELDS = COMMON_FIELDS + ("answer",)


def fields_of(split: str) -> tuple[str, ...]:
    """The fields `decode_record` returns for `split`."""
    if split == "sft_grm":
        return PAIR_FIELDS + ("judgment",)
    if split in W.PAIR_SPLITS:
        return PAIR_FIELDS
    if split in W.PROMPT_SPLITS:
        return PROMPT_FIELDS
    raise KeyError(f"unknown split {split!r}; splits are {W.SPLITS}")


def _text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, np.bytes_)):
        return bytes(v).decode("utf-8")
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return _text(v.item())
    return str(v)


def decode_record(raw: Mapping[str, Any], split: str) -> dict[str, Any]:
    """A stored record (TFDS bytes / PNG, or `world.make_record` output) -> a clean python dict.

    Raises ValueError naming the record id and the field for a missing field, a bad label, a
    malformed scene or an unreadable image."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{split}: record is a {type(raw).__name__}, not a dict")
    rid = _text(raw.get("id", "?"))
    where = f"{split} record {rid!r}"
    out: dict[str, Any] = {}
    for f in fields_of(split):
        if f not in raw:
            raise ValueError(f"{where}: missing field {f!r}")
        v = raw[f]
        if f == "image":
            if isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 3 and v.shape[-1] == 3:
                out[f] = v
            else:
                out[f] = W.decode_png(
                    v if not isinstance(v, np.ndarray) else v.tobytes(), where=f"{where}: field 'image'"
                )
        elif f == "overall_response":
            label = int(v)
            if label not in (1, 2):
                raise ValueError(f"{where}: field 'overall_response' must be 1 or 2, got {label}")
            out[f] = label
        elif f in ("oracle_1", "oracle_2"):
            out[f] = float(v)
        elif f == "label_noisy":
            out[f] = bool(v)
        else:
            out[f] = _text(v)
    try:
        W.Scene.from_any(out["scene"])
    except ValueError as e:
        raise ValueError(f"{where}: field 'scene': {e}") from None
    for f in ("question",) + (("response_1", "response_2") if split in W.PAIR_SPLITS else ("answer",)):
        if not out[f].strip():
            raise ValueError(f"{where}: field {f!r} is empty")
    return out


class WorldSource:
    """A grain random-access source that draws records straight from the world (no files)."""

    def __init__(self, cfg: W.WorldConfig, split: str):
        self.cfg, self.split = cfg, split
        self._n = cfg.size(split)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < self._n:
            raise IndexError(f"{self.split}: index {i} out of range [0, {self._n})")
        return W.make_record(self.cfg, self.split, int(i), encode_image=True)

    def __repr__(self) -> str:
        return f"WorldSource({self.split!r}, n={self._n})"


def open_source(data_dir: str | None, split: str, world: W.WorldConfig | None = None, *, source: str = "tfds"):
    """The raw random-access source of `split`: "tfds" (files under data_dir, built if missing)
    or "world" (generated on the fly, data_dir unused)."""
    world = W.WorldConfig() if world is None else world
    fields_of(split)  # validates the name
    if source == "world":
        return WorldSource(world, split)
    if source != "tfds":
        raise ValueError(f"source must be 'tfds' or 'world', got {source!r}")
    if data_dir is None:
        raise ValueError("open_source: data_dir is required for source='tfds'")
    import tensorflow_datasets as tfds

    from grlhfv_jax.data import synthetic_tfds

    if world.size(split) == 0:
        raise ValueError(f"split {split!r} has size 0 in this WorldConfig")
    b = synthetic_tfds.build(data_dir, world)
    return b.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} must be in [0, shard_count={shard_count})")
    return shard_index, shard_count


def dataset(
    data_dir: str | None,
    split: str,
    world: W.WorldConfig | None = None,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    batch_size: int | None = None,
    drop_remainder: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
    source: str = "tfds",
) -> grain.MapDataset:
    """A grain MapDataset of decoded records (or lists of records: this process's rows of global
    batches of `batch_size`).

    Shuffled with `seed` (a different order every epoch), repeated `num_epochs` times (None =
    forever), then this process's share (module docstring) is decoded and batched: only its own
    records are decoded."""
    src = open_source(data_dir, split, world, source=source)
    si, sc = _shard(shard_index, shard_count)
    ds = grain.MapDataset.source(src)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.map(lambda r: decode_record(r, split))
    if batch_size is not None:
        ds = ds.batch(host_batch_size(batch_size, sc), drop_remainder=drop_remainder, batch_fn=list)
    return ds[si::sc] if sc > 1 else ds


def host_batch_size(batch_size: int, count: int) -> int:
    """The rows each of `count` processes reads of a global batch of `batch_size` (ValueError
    unless it divides)."""
    if int(batch_size) % int(count):
        raise ValueError(
            f"a global batch of {batch_size} rows does not split over {count} processes: make "
            f"batch sizes (pairs / prompts per step) multiples of the process count"
        )
    return int(batch_size) // int(count)


class _Decode(grain.transforms.Map):
    def __init__(self, split: str):
        self.split = split

    def map(self, element):
        return decode_record(element, self.split)


def loader(
    data_dir: str | None,
    split: str,
    world: W.WorldConfig | None = None,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    batch_size: int | None = None,
    drop_remainder: bool = False,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int = 0,
    source: str = "tfds",
) -> grain.DataLoader:
    """The same stream as a grain.DataLoader (worker processes with `worker_count` > 0).

    Note: grain's IndexSampler shards contiguously and orders records differently from
    `dataset`; both are deterministic given `seed`."""
    src = open_source(data_dir, split, world, source=source)
    si, sc = _shard(shard_index, shard_count)
    shard = grain.sharding.ShardOptions(shard_index=si, shard_count=sc, drop_remainder=sc > 1)
    sampler = grain.samplers.IndexSampler(
        num_records=len(src), shard_options=shard, shuffle=shuffle, num_epochs=num_epochs, seed=seed
    )
    ops: list = [_Decode(split)]
    if batch_size is not None:
        ops.append(grain.transforms.Batch(batch_size, drop_remainder=drop_remainder, batch_fn=list))
    return grain.DataLoader(data_source=src, sampler=sampler, operations=ops, worker_count=worker_count)


def load_records(
    data_dir: str | None,
    split: str,
    world: W.WorldConfig | None = None,
    *,
    n: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    source: str = "tfds",
) -> list[dict[str, Any]]:
    """This process's share of the first `n` records of `split` (all if None), in order."""
    src = open_source(data_dir, split, world, source=source)
    si, sc = _shard(shard_index, shard_count)
    n = len(src) if n is None else min(n, len(src))
    return [decode_record(src[i], split) for i in range(si, n, sc)]


# ---------------------------------------------------------------------------------------------
# Tokenizer cache.


def tokenizer_texts(world: W.WorldConfig, extra_texts: Iterable[str] = ()) -> list[str]:
    """World texts + the GRM prompt template + the chat system line (what the demo tokenises)."""
    from grlhfv_jax.rl.grm_reward import build_grm_prompt

    texts = W.world_texts(world)
    # Fixed prompt text is repeated so that BPE merges its words into single tokens (short prompts).
    texts.extend([build_grm_prompt("What colour are the objects?", "They are red.", "They are blue.")] * 50)
    texts.extend(["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"] * 50)
    texts.extend(extra_texts)
    return texts


def ensure_tokenizer(
    data_dir: str,
    world: W.WorldConfig | None = None,
    *,
    vocab_size: int = 1024,
    extra_texts: Sequence[str] = (),
    special_tokens: Sequence[str] = (),
) -> str:
    """Train the demo tokenizer on the world's texts once; return its folder under `data_dir`.
    `special_tokens`: the model family's own, added to Qwen2-VL's (`PromptFormat.special_tokens`).

    The folder name hashes the training texts, the vocab size and the added special tokens, so any
    change retrains."""
    from grlhfv_jax.data.tokenizer import train_tokenizer

    world = W.WorldConfig() if world is None else world
    texts = tokenizer_texts(world, extra_texts)
    key = json.dumps([texts, vocab_size] + ([list(special_tokens)] if special_tokens else []))
    out = os.path.join(os.fspath(data_dir), "tokenizer_" + hashlib.sha1(key.encode()).hexdigest()[:10])
    if os.path.isfile(os.path.join(out, "tokenizer.json")):
        return out
    tmp = out + f".tmp{os.getpid()}"
    train_tokenizer(texts, tmp, vocab_size, extra_special_tokens=special_tokens)
    if os.path.exists(out):  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def prepare(
    data_dir: str,
    world: W.WorldConfig | None = None,
    *,
    vocab_size: int = 1024,
    extra_texts: Sequence[str] = (),
    special_tokens: Sequence[str] = (),
) -> dict[str, str]:
    """Build the TFDS files and the tokenizer (both cached). Returns their paths."""
    from grlhfv_jax.data import synthetic_tfds

    world = W.WorldConfig() if world is None else world
    b = synthetic_tfds.build(data_dir, world)
    tok = ensure_tokenizer(
        data_dir, world, vocab_size=vocab_size, extra_texts=extra_texts, special_tokens=special_tokens
    )
    return {"dataset_dir": os.fspath(b.data_path), "tokenizer_dir": tok}
