"""`FilesSource`: the `data.sources.DataSource` interface over preference files on disk.

Each split the stages read (``grm_train``, ``grm_test_id``, ``policy_train``, ...) is a `SplitFiles`:
a path in one of `preference_files`' formats, its field map and what to do with bad records.
Pair splits are read with `preference_files.read_preferences`, prompt splits
(`PROMPT_SPLITS`) with `read_prompts`. Records carry what the stages read:

- pairs: ``id``, ``question``, ``image`` (uint8 [H, W, 3], decoded when a record is handed out),
  ``response_1``, ``response_2``, ``overall_response`` (1 or 2), ``answer`` (the preferred
  response: what a policy warm start learns), ``meta``;
- prompts: ``id``, ``question``, ``image``, ``meta``.

``hooks`` is None: files hold no oracle. Bad records are skipped and counted per split and reason
(`bad_summary`, which the `data` stage writes into the run's summary) or stop the read.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np

from grlhfv_jax.data import preference_files as pf

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
    check_images: bool = True           # decode every image once when read (catches corrupt files)

    def field_map(self) -> pf.FieldMap:
        if isinstance(self.fields, pf.FieldMap):
            return self.fields
        if self.fields not in pf.FIELD_MAPS:
            raise ValueError(f"unknown field map {self.fields!r} (known: {', '.join(sorted(pf.FIELD_MAPS))})")
        return pf.FIELD_MAPS[self.fields]


def read_split(split: str, spec: SplitFiles) -> tuple[list[dict], pf.BadRecords]:
    """The records of `split` as stored (image bytes, not decoded) and what was skipped."""
    read = pf.read_prompts if split in PROMPT_SPLITS else pf.read_preferences
    try:
        recs, bad = read(spec.path, spec.field_map(), format=spec.format, on_bad=spec.on_bad, limit=spec.limit,
                         check_images=spec.check_images)
    except KeyError as e:   # a column the field map names is missing: say which split
        raise KeyError(f"split {split!r}: {e.args[0]}") from None
    if split not in PROMPT_SPLITS:
        for r in recs:
            r["answer"] = r["response_1"] if r["overall_response"] == 1 else r["response_2"]
    return recs, bad


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] RGB."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def _decoded(rec: dict) -> dict:
    img = rec["image"]
    return dict(rec, image=decode_image(img) if isinstance(img, (bytes, bytearray)) else img)


def _process_share(n: int, shard: tuple[int, int] | None) -> np.ndarray:
    if shard is None:
        import jax
        shard = (jax.process_index(), jax.process_count())
    index, count = shard
    return np.arange(index, n, count)


class EndlessBatches:
    """``ds[step]``: `batch_size` records of this process's share, in a fresh order each epoch
    (`default_rng([seed, epoch])`), the same for the same step on a resume."""

    def __init__(self, records: Sequence[dict], *, seed: int, batch_size: int, split: str):
        if not records:
            raise ValueError(f"split {split!r} has no records (all skipped?): nothing to batch")
        self.records, self.seed, self.batch_size = records, int(seed), int(batch_size)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.records))}
        return self._perms[epoch]

    def __getitem__(self, step: int) -> list[dict]:
        n, out = len(self.records), []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            out.append(_decoded(self.records[self._perm(pos // n)[pos % n]]))
        return out


@dataclasses.dataclass
class FilesSource:
    """Splits read from files (`SplitFiles` per split name), read once each, on first use.
    `shard`: (process index, count); None = jax's."""

    splits: dict
    shard: tuple[int, int] | None = None
    hooks: None = None

    def __post_init__(self):
        self._cache: dict[str, list[dict]] = {}
        self.bad: dict[str, pf.BadRecords] = {}

    def _all(self, split: str) -> list[dict]:
        if split not in self._cache:
            if split not in self.splits:
                raise KeyError(f"data split {split!r} is not configured (set config.data.files.{split}.path; "
                               f"configured: {', '.join(sorted(self.splits)) or 'none'})")
            self._cache[split], self.bad[split] = read_split(split, self.splits[split])
        return self._cache[split]

    def dataset(self, split: str, *, seed: int, batch_size: int) -> EndlessBatches:
        recs = self._all(split)
        share = [recs[i] for i in _process_share(len(recs), self.shard)]
        return EndlessBatches(share, seed=seed, batch_size=batch_size, split=split)

    def records(self, split: str, n: int | None = None) -> list[dict]:
        recs = self._all(split)[:n]
        return [_decoded(recs[i]) for i in _process_share(len(recs), self.shard)]

    def encode_image(self, image) -> bytes:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    def bad_summary(self) -> dict:
        """``data/<split>/bad_<reason>``, ``data/<split>/bad_total``, ``data/<split>/rows_read`` of
        every split read so far."""
        out = {}
        for split, bad in self.bad.items():
            out.update(bad.summary(prefix=f"data/{split}/bad_"))
        return out


def write_parquet(path: str, records: Sequence[dict]) -> None:
    """Writes records (image bytes) as one parquet file that `read_split` reads back with the
    field map "align_anything" (pairs) plus ``source_id`` metadata: the `data` stage's cleaned splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols = {"source_id": [str(r["id"]) for r in records], "question": [r["question"] for r in records],
            "image": [bytes(r["image"]) for r in records]}
    if records and "response_1" in records[0]:
        for k in ("response_1", "response_2", "overall_response"):
            cols[k] = [r[k] for r in records]
    pq.write_table(pa.table(cols), path)
