"""`FilesSource`: the `data.sources.DataSource` interface over preference files on disk.

Two halves. Reading the user's files: each split the stages read (``grm_train``, ``grm_test_id``,
``policy_train``, ...) is a `SplitFiles`: a path in one of `preference_files`' formats, its field
map and what to do with bad records; `iter_split` streams its records (image bytes), prompt splits
(`PROMPT_SPLITS`) with `preference_files.iter_prompts`, the others with `iter_preferences`.
The `data` stage (data/files_convert.py) checks them and converts each split once into TFDS
array_record files (`files_tfds.Writer`; `write_splits` does it without length checks).

Reading the converted splits: `FilesSource(dataset_dir)` reads them through grain, random access,
nothing held in memory but the batch asked for. Records carry what the stages read:

- pairs: ``id``, ``question``, ``image`` (uint8 [H, W, 3], decoded when a record is handed out),
  ``response_1``, ``response_2``, ``overall_response`` (1 or 2), ``answer`` (the preferred
  response: what a policy warm start learns), ``meta``;
- prompts: ``id``, ``question``, ``image``, ``meta``.

``hooks`` is None: files hold no oracle.

With an ``image_processor`` and ``image_workers`` > 0, `dataset` also runs that processor on each
record's image in the grain read threads (`Prefetched`, ``max(read_threads, image_workers)`` of
them): ``image`` is then a `processing.PreparedImage`, the same uint8 array carrying the
processor's ``pixel_values`` / ``image_grid_thw``, which `processing.encode_example` uses instead
of running the processor again in the step (docs/data.md, "Images in the read threads").
`records` (the evaluations' records) decodes in a pool of as many threads, without processing.
"""

from __future__ import annotations

import collections
import concurrent.futures
import copy
import dataclasses
import functools
import io
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from grlhfv_jax.data import preference_files as pf
from grlhfv_jax.data.preference_files import decode_image  # noqa: F401  (files_source.decode_image)

PROMPT_SPLITS = ("policy_train", "policy_test")


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """Where one split's records are: `path` (file or folder), `format` (preference_files.FORMATS),
    `fields` (a FIELD_MAPS name or a FieldMap), `on_bad` ("skip" or "fail"), `limit` (records kept), `check_images`."""

    path: str
    format: str = "auto"
    fields: str | pf.FieldMap = "align_anything"
    on_bad: str = "skip"
    limit: int | None = None
    check_images: bool = True  # decode every image once when read (catches corrupt files)

    def field_map(self) -> pf.FieldMap:
        if isinstance(self.fields, pf.FieldMap):
            return self.fields
        if self.fields not in pf.FIELD_MAPS:
            raise ValueError(f"unknown field map {self.fields!r} (known: {', '.join(sorted(pf.FIELD_MAPS))})")
        return pf.FIELD_MAPS[self.fields]


def iter_split(split: str, spec: SplitFiles) -> tuple[Iterator[dict], pf.BadRecords]:
    """(the records of `split` one at a time, as stored: image bytes, not decoded; pairs with their
    ``answer``) and what was skipped, counted as the iterator is consumed."""
    read = pf.iter_prompts if split in PROMPT_SPLITS else pf.iter_preferences
    try:
        recs, bad = read(
            spec.path,
            spec.field_map(),
            format=spec.format,
            on_bad=spec.on_bad,
            limit=spec.limit,
            check_images=spec.check_images,
        )
    except KeyError as e:  # a column the field map names is missing: say which split
        raise KeyError(f"split {split!r}: {e.args[0]}") from None

    def records():
        try:
            for r in recs:
                if split not in PROMPT_SPLITS:
                    r["answer"] = r["response_1"] if r["overall_response"] == 1 else r["response_2"]
                yield r
        except KeyError as e:  # a JSONL file's columns are checked at its first row
            raise KeyError(f"split {split!r}: {e.args[0]}") from None

    return records(), bad


def read_split(split: str, spec: SplitFiles) -> tuple[list[dict], pf.BadRecords]:
    """`iter_split` as a list (every record in memory: tests, small splits)."""
    recs, bad = iter_split(split, spec)
    return list(recs), bad


def write_splits(
    out_dir: str, splits: Mapping[str, SplitFiles], *, shard_bytes: int | None = None
) -> tuple[str, dict[str, pf.BadRecords]]:
    """Converts each split as read (bad records skipped or refused per its spec; no length checks,
    which the `data` stage adds) into TFDS files under `out_dir`: (the dataset folder for
    `FilesSource`, what each split skipped)."""
    from grlhfv_jax.data import files_tfds

    w = files_tfds.Writer(out_dir, **({} if shard_bytes is None else {"shard_bytes": shard_bytes}))
    bad = {}
    for split, spec in splits.items():
        recs, bad[split] = iter_split(split, spec)
        w.write_split(split, recs)
    return w.finish(), bad


def _shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        import jax

        shard = (jax.process_index(), jax.process_count())
    index, count = int(shard[0]), int(shard[1])
    if not 0 <= index < count:
        raise ValueError(f"shard {shard}: the process index must be in [0, {count})")
    return index, count


class _Prepare:
    """A grain map: the record with its ``image`` run through the processor (`processing.prepare_image`),
    one copy of the processor per read thread; an image that cannot be processed is a ValueError
    naming the split and record."""

    def __init__(self, image_processor, split: str):
        self.image_processor, self.split = image_processor, split
        self._local = threading.local()

    def __call__(self, rec: dict) -> dict:
        from grlhfv_jax import processing

        proc = getattr(self._local, "proc", None)
        if proc is None:
            proc = self._local.proc = copy.deepcopy(self.image_processor)
        try:
            image = processing.prepare_image(proc, rec["image"])
        except Exception as e:  # PIL and the processor raise many types
            raise ValueError(
                f"data split {self.split!r}: record {rec.get('id', '?')!r}: the image processor "
                f"failed on its image ({rec['image'].shape}): {type(e).__name__}: {e}"
            ) from e
        return dict(rec, image=image)


class Prefetched:
    """``ds[step]`` of a grain `MapDataset` of batches, read ahead: `threads` grain threads decode the
    batches after the last one asked for while the caller runs its step. Equal to ``ds[step]`` for
    every step; asking for any step but the next (a resume, a jump) restarts the read there.
    `close` (or leaving a ``with`` block) stops the read-ahead: it returns when no read thread is
    left running (read-ahead threads that outlived their dataset kept decoding and processing
    images after it was dropped, into whatever ran next)."""

    def __init__(self, ds, threads: int, buffer: int = 2):
        self.ds, self.threads, self.buffer = ds, int(threads), int(buffer)
        self._it, self._next = None, None

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, step: int):
        import grain

        step = int(step)
        if self._it is None or step != self._next:
            self.close()
            opts = grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=self.buffer)
            self._it = iter(self.ds[step:].to_iter_dataset(opts))
        self._next = step + 1
        return next(self._it)

    def close(self) -> None:
        """Stops the read-ahead and waits for the reads in flight (grain's `close` cancels the
        pending ones but leaves the running ones running)."""
        it, self._it, self._next = self._it, None, None
        if it is None:
            return
        it.close()
        executor = getattr(it, "_executor", None)  # grain's thread pool (PrefetchDatasetIterator)
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        it = getattr(self, "_it", None)
        if it is not None:
            it.close()


@dataclasses.dataclass
class FilesSource:
    """The splits in a `files_tfds` dataset folder, read through grain. `shard`: (process index,
    process count); None = jax's. `dataset`: this process's block of each global batch; `records`:
    records ``index, index + count, ...``."""

    dataset_dir: str
    shard: tuple[int, int] | None = None
    hooks: None = None
    read_threads: int = 0  # > 0: `dataset` decodes the next batches in that many threads (`Prefetched`)
    image_processor: Any = None  # with image_workers > 0: run in the read threads (module docstring)
    image_workers: int = 0

    def __post_init__(self):
        self._builder = None

    def source(self, split: str):
        """The split's random-access source (TFDS `ArrayRecordDataSource`: raw records, `files_tfds.decode`)."""
        import tensorflow_datasets as tfds

        if self._builder is None:
            if not os.path.isfile(os.path.join(self.dataset_dir, "dataset_info.json")):
                raise FileNotFoundError(
                    f"{self.dataset_dir}: no converted splits (dataset_info.json); run the 'data' stage"
                )
            self._builder = tfds.builder_from_directory(self.dataset_dir)
        if split not in self._builder.info.splits:
            have = ", ".join(sorted(self._builder.info.splits)) or "none"
            raise KeyError(
                f"data split {split!r} is not in {self.dataset_dir} (it has: {have}): set "
                f"config.data.files.{split}.path, or every record of it was skipped"
            )
        return self._builder.as_data_source(split)

    def _decode(self, split: str):
        from grlhfv_jax.data import files_tfds

        return functools.partial(files_tfds.decode, prompt=split in PROMPT_SPLITS)

    def dataset(self, split: str, *, seed: int, batch_size: int):
        """Endless batches, a `grain.MapDataset`: ``ds[step]`` is a list of `batch_size` decoded
        records of this process's share, shuffled by `seed` with a new order every epoch; the same
        list for the same (seed, step), so a run resumed at a step sees what it would have seen.
        ``ds.to_iter_dataset()`` iterates it (grain's `get_state` / `set_state`).

        Several processes: `batch_size` is the GLOBAL batch size; the records are shuffled as one
        process shuffles them and process p's ``ds[step]`` is the contiguous block p of
        ``batch_size / count`` rows of global batch ``step`` (only those records are decoded), so the
        hosts' blocks in process order (`sharding.global_batch`) are one process's batches."""
        import grain

        from grlhfv_jax.data.pipeline import host_batch_size

        index, count = _shard(self.shard)
        per_host = host_batch_size(batch_size, count)
        ds = grain.MapDataset.source(self.source(split))
        if len(ds) == 0:
            raise ValueError(f"split {split!r} has no records: nothing to batch")
        ds = ds.shuffle(seed=int(seed)).repeat(None).map(self._decode(split))
        threads = self.read_threads
        if self.image_processor is not None and self.image_workers > 0:
            ds = ds.map(_Prepare(self.image_processor, split))
            threads = max(threads, self.image_workers)
        # drop_remainder: an endless dataset has no remainder, and grain's batch of 1 without it
        # reports a length that overflows the slice below (one row per host)
        ds = ds.batch(per_host, drop_remainder=True, batch_fn=list)
        if count > 1:
            ds = ds[index::count]
        return Prefetched(ds, threads) if threads > 0 else ds

    def records(self, split: str, n: int | None = None) -> list[dict]:
        """This process's share of the first `n` records of `split` (all if None), in order, decoded.
        With read threads or image workers (``max(read_threads, image_workers)`` > 0) the records
        are decoded in a pool of that many threads: the same list. Their images are not processed
        there (plain arrays, no `PreparedImage`): a stage keeps this list for its evaluations (grm_rl:
        the whole stage), and every image's patches (up to 24 MB an image at Qwen2-VL's largest
        size, ~8x its pixels) would stay with it; the judging encodes them batch by batch. At most
        a few records per thread are in flight beyond the list."""
        if n is not None and int(n) <= 0:  # none asked (eval_pairs = 0): the split need not exist
            return []
        src = self.source(split)
        index, count = _shard(self.shard)
        n = len(src) if n is None else min(int(n), len(src))
        decode = self._decode(split)
        rows = range(index, n, count)
        threads = max(self.read_threads, self.image_workers)
        if threads <= 0 or not rows:
            return [decode(src[i]) for i in rows]

        out, pending = [], collections.deque()
        pool = concurrent.futures.ThreadPoolExecutor(min(threads, len(rows)), thread_name_prefix=f"records-{split}")
        try:
            for i in rows:  # in order; a bounded window ahead (an error stops the rest soon)
                pending.append(pool.submit(lambda i: decode(src[i]), i))
                if len(pending) >= 4 * threads:
                    out.append(pending.popleft().result())
            while pending:
                out.append(pending.popleft().result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def encode_image(self, image) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()
