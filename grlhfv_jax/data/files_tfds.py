"""Prepared preference pairs and prompts as a TFDS dataset: sharded array_record files, written
record by record as they stream by (no TensorFlow), read back with `tfds.builder_from_directory`.

    w = Writer(out_dir)                          # the dataset lands in <out_dir>/grlhfv_files/1.0.0
    w.write_split("grm_train", records)          # any iterable of records; returns how many
    w.write_split("policy_train", prompts)
    path = w.finish()                            # dataset_info.json + features.json
    src = tfds.builder_from_directory(path).as_data_source("grm_train")   # src[i]: a raw record

One schema for every split (`FEATURES`): ``id``, ``question``, ``response_1``, ``response_2``
(empty for prompts), ``overall_response`` (1 | 2; 0 for prompts), ``image`` (the encoded bytes as
read: PNG, JPEG, ...; a scalar bytes tensor, so they come back byte-identical and are decoded by
the reader, `decode`) and ``meta`` (JSON text). A split's records are cut into shards of about
`shard_bytes` serialized bytes (``grlhfv_files-<split>.array_record-0000k-of-0000n``), written
with ``group_size:1`` (TFDS's setting: one record read without its neighbours).

Why not `GeneratorBasedBuilder.download_and_prepare` (synthetic_tfds.py): its writer keeps up to
1 GB of serialized records in memory and beyond that spills them to temporary buckets through
`tf.io.gfile` (TensorFlow); with shuffling disabled all records land in one bucket, which is then
sorted in memory. A split of tens of GB would need TensorFlow and memory for all of it. Here at
most one record (plus array_record's write buffer) is held at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from grlhfv_jax.data import preference_files

DATASET_NAME = "grlhfv_files"
VERSION = "1.0.0"
SHARD_BYTES = 256 << 20  # a new array_record file after this many serialized bytes
MARKER = "conversion.json"  # written last, before the rename (Writer.finish): the folder is complete

FEATURES = tfds.features.FeaturesDict(
    {
        "id": tfds.features.Text(),
        "question": tfds.features.Text(),
        "response_1": tfds.features.Text(),
        "response_2": tfds.features.Text(),
        "overall_response": np.int32,
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded image bytes, any format
        "meta": tfds.features.Text(),  # JSON object
    }
)


def _example(rec: Mapping[str, Any], split: str) -> dict:
    try:
        image = bytes(rec["image"])
        meta = json.dumps(rec.get("meta") or {}, default=str)
        return {
            "id": str(rec["id"]),
            "question": rec["question"],
            "response_1": rec.get("response_1", ""),
            "response_2": rec.get("response_2", ""),
            "overall_response": int(rec.get("overall_response", 0)),
            "image": image,
            "meta": meta,
        }
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"split {split!r}: record {rec.get('id', '?')!r} cannot be stored: {e!r} (needs id, "
            "question, image bytes; pairs also response_1, response_2, overall_response)"
        ) from None


class Writer:
    """Writes splits one after another into ``<out_dir>/grlhfv_files/1.0.0.incomplete`` (emptied
    first: what a crashed earlier writer left there is dropped); `finish` writes the metadata and
    moves it to ``<out_dir>/grlhfv_files/1.0.0`` (replacing an older one). One writer per `out_dir`
    at a time: the `data` stage converts on process 0 only (data/files_convert.py)."""

    def __init__(self, out_dir: str, *, shard_bytes: int = SHARD_BYTES):
        self.dataset_dir = os.path.join(os.fspath(out_dir), DATASET_NAME, VERSION)
        self.tmp_dir = self.dataset_dir + ".incomplete"
        self.shard_bytes = int(shard_bytes)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.makedirs(self.tmp_dir)
        self.splits: list[tfds.core.SplitInfo] = []

    def _shard_path(self, split: str, k: int, n: int | str) -> str:
        n = f"{n:05d}" if isinstance(n, int) else n
        return os.path.join(self.tmp_dir, f"{DATASET_NAME}-{split}.array_record-{k:05d}-of-{n}")

    def write_split(self, split: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Streams `records` (dicts with id, question, image bytes, meta, and for pairs response_1,
        response_2, overall_response) into shards; returns how many. A split without records writes
        no file and is left out of the dataset."""
        from array_record.python.array_record_module import ArrayRecordWriter

        if any(s.name == split for s in self.splits):
            raise ValueError(f"split {split!r} written twice")
        lengths, nbytes, writer, size = [], 0, None, 0
        for rec in records:
            data = FEATURES.serialize_example(_example(rec, split))
            if writer is None or size >= self.shard_bytes:
                if writer is not None:
                    writer.close()
                writer = ArrayRecordWriter(self._shard_path(split, len(lengths), "tmp"), "group_size:1")
                lengths.append(0)
                size = 0
            writer.write(data)
            lengths[-1] += 1
            size += len(data)
            nbytes += len(data)
        if writer is not None:
            writer.close()
        for k in range(len(lengths)):  # now that the number of shards is known
            os.replace(self._shard_path(split, k, "tmp"), self._shard_path(split, k, len(lengths)))
        if lengths:
            self.splits.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=nbytes))
        return sum(lengths)

    def finish(self, marker: Mapping[str, Any] | None = None) -> str:
        """Writes dataset_info.json and features.json (and `marker`, if given, as ``MARKER`` JSON,
        last), then moves the folder into place; returns the dataset folder. A folder holding
        ``MARKER`` is therefore complete: the `data` stage's sign of a finished conversion."""
        if not self.splits:
            raise ValueError(f"{self.tmp_dir}: no split has any record: nothing to write")
        tfds.folder_dataset.write_metadata(
            data_dir=self.tmp_dir,
            features=FEATURES,
            split_infos=self.splits,
            version=VERSION,
            check_data=False,
            description="grlhfv_jax: prepared preference pairs / prompts (data/files_tfds.py)",
        )
        if marker is not None:
            with open(os.path.join(self.tmp_dir, MARKER), "w", encoding="utf-8") as f:
                json.dump(marker, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
        shutil.rmtree(self.dataset_dir, ignore_errors=True)
        os.replace(self.tmp_dir, self.dataset_dir)
        return self.dataset_dir


def _text(v) -> str:
    return bytes(v).decode("utf-8") if isinstance(v, (bytes, bytearray, np.bytes_)) else str(v)


def decode(raw: Mapping[str, Any], prompt: bool) -> dict:
    """A stored record (`as_data_source(split)[i]`) -> the record the stages read: ``id``,
    ``question``, ``image`` (uint8 [H, W, 3]), ``meta``; pairs (`prompt` False) also ``response_1``,
    ``response_2``, ``overall_response`` (1 | 2) and ``answer`` (the preferred response)."""
    rec_id = _text(raw["id"])
    try:
        image = preference_files.decode_image(bytes(raw["image"]))
    except Exception as e:  # PIL raises many types for bad data
        raise ValueError(
            f"record {rec_id!r}: its stored image does not decode ({type(e).__name__}: {e}); the "
            "'data' stage checks images when it converts: convert again"
        ) from e
    rec = {"id": rec_id, "question": _text(raw["question"]), "image": image, "meta": json.loads(_text(raw["meta"]))}
    if not prompt:
        rec.update(
            response_1=_text(raw["response_1"]),
            response_2=_text(raw["response_2"]),
            overall_response=int(raw["overall_response"]),
        )
        rec["answer"] = rec["response_1"] if rec["overall_response"] == 1 else rec["response_2"]
    return rec
