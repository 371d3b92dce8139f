"""Preference pairs and prompts as users hold them on disk, read into the pipeline's records.

Formats (`format="auto"` picks one from the path):
- "parquet": a ``.parquet`` file, or a folder holding them at any depth (the hub's layout,
  ``data/train-00000-of-00004.parquet``); read in file-name order.
- "arrow": a ``datasets.save_to_disk`` folder (``state.json`` + ``data-*.arrow`` Arrow IPC files).
- "jsonl": one JSON object per line (``.jsonl`` / ``.json``), images as paths relative to the
  file's folder (or absolute).

An image value may be a Hugging Face Image struct ``{"bytes": ..., "path": ...}`` (bytes win), raw
bytes, or a path string. A `FieldMap` names the dataset's column for each of our fields, so the
same reader serves any dataset with the same meaning; `FIELD_MAPS` holds the paper's datasets.

Records (one per row kept): ``id`` ("<file stem>-<row>"), ``question``, ``image`` (the encoded
image bytes as stored), ``response_1``, ``response_2``, ``overall_response`` (1 or 2: the
preferred response), ``meta`` (the field map's metadata columns, e.g. BeaverTails-V's category or
the other label). Prompt records (`read_prompts`): ``id``, ``question``, ``image``, ``meta``.
`read_preferences` / `read_prompts` return a list (every image in memory); `iter_preferences` /
`iter_prompts` yield one record at a time, reading each file in batches of rows (a whole
dataset: the `data` stage converts it this way).

Bad records are never silent: each is skipped and counted by reason (``on_bad="skip"``), or
stops the read with an error naming the file, row and reason (``on_bad="fail"``). Reasons:
malformed (a JSONL line that is not a JSON object), missing_field (a needed value is null),
missing_image (no bytes and no readable file), undecodable_image, bad_label (not one of the
label values), empty_text (an empty or blank question or response). A column missing from a file is an error
in either mode (the field map does not fit the dataset).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from grlhfv_jax.data import grm_targets

REASONS = ("malformed", "missing_field", "missing_image", "undecodable_image", "bad_label", "empty_text")
FORMATS = ("auto", "parquet", "arrow", "jsonl")


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Our field -> the dataset's column. ``label`` holds which response is preferred:
    ``label_values[0]`` means response 1, ``label_values[1]`` response 2 (ints or strings)."""

    question: str = "question"
    image: str = "image"
    response_1: str = "response_1"
    response_2: str = "response_2"
    label: str = "overall_response"
    label_values: tuple = (1, 2)
    meta: tuple[str, ...] = ()  # columns kept as metadata (absent ones are an error)


FIELD_MAPS = {
    # Align-Anything text-image-to-text: the overall preference; the fine-grained labels as metadata
    "align_anything": FieldMap(),
    # ... with each response's fine-grained rates and critique kept: the GRM+SFT baseline's judgments
    # (data.grm_targets.ALIGN_ANYTHING; sft.grm.judgments = "align_anything")
    "align_anything_judgments": FieldMap(meta=grm_targets.columns(grm_targets.ALIGN_ANYTHING)),
    # BeaverTails-V: which label trains the judge is a choice; the other one stays as metadata
    "beavertails_v_helpful": FieldMap(label="more_helpful_response_id", meta=("category", "safer_response_id")),
    "beavertails_v_safe": FieldMap(label="safer_response_id", meta=("category", "more_helpful_response_id")),
}


class BadRecordError(ValueError):
    """A bad record under ``on_bad="fail"`` (names the file, row and reason)."""


@dataclasses.dataclass
class BadRecords:
    """What a read skipped: counts per reason and the first few (row id, reason, detail)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list = dataclasses.field(default_factory=list)
    read: int = 0

    def add(self, row_id: str, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < 20:
            self.examples.append((row_id, reason, detail))

    def summary(self, prefix: str = "data/bad_") -> dict:
        """Flat counts for a run's summary: ``data/bad_<reason>`` for every reason, and the rows read."""
        out = {f"{prefix}{r}": int(self.counts.get(r, 0)) for r in REASONS}
        out[f"{prefix}total"] = int(sum(self.counts.values()))
        out[f"{prefix.rsplit('bad_', 1)[0]}rows_read"] = int(self.read)
        return out


def detect_format(path: str) -> str:
    """The format of `path` (a file or a folder), or a ValueError saying what was found."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "state.json")) or glob.glob(os.path.join(path, "*.arrow")):
            return "arrow"
        if glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True):
            return "parquet"
        raise ValueError(
            f"{path!r}: a folder with neither a datasets.save_to_disk layout (state.json, *.arrow) nor .parquet files"
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"preference data not found: {path!r}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        return "parquet"
    if ext in (".jsonl", ".json"):
        return "jsonl"
    if ext == ".arrow":
        return "arrow"
    raise ValueError(f"{path!r}: unknown extension {ext!r} (expected .parquet, .jsonl / .json, .arrow or a folder)")


def _files(path: str, fmt: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if fmt == "parquet":
        return sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    state = os.path.join(path, "state.json")
    if os.path.isfile(state):  # datasets' own order of its shards
        with open(state) as f:
            names = [d["filename"] for d in json.load(f).get("_data_files", [])]
        if names:
            return [os.path.join(path, n) for n in names]
    return sorted(glob.glob(os.path.join(path, "*.arrow")))


def _check_columns(file: str, have, need) -> None:
    missing = [c for c in need if c not in have]
    if missing:
        raise KeyError(
            f"{file}: no column(s) {missing} (it has {sorted(have)}); set the field map "
            "(config.data.files.<split>.fields) to this dataset's column names"
        )


def json_object(line: str) -> dict:
    """One JSON line that must hold an object; ValueError otherwise (malformed JSON, or another value)."""
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError(f"a JSON {type(row).__name__}, not an object")
    return row


def _rows(file: str, fmt: str, columns: list[str]) -> Iterator[tuple[int, Any]]:
    """(row index, dict of `columns` or an Exception for a malformed row) for every row of `file`."""
    if fmt == "jsonl":
        with open(file, encoding="utf-8") as f:
            checked = False
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json_object(line)
                except ValueError as e:
                    yield i, e
                    continue
                if not checked:  # the first well-formed row fixes the columns
                    _check_columns(file, row.keys(), columns)
                    checked = True
                yield i, {c: row.get(c) for c in columns}
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        # pre_buffer=False: pyarrow's default pre-buffering keeps every row group read so far (the
        # whole file by the end); this way one row group at a time is in memory
        pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=8 << 20)
        _check_columns(file, pf.schema_arrow.names, columns)
        batches = pf.iter_batches(batch_size=256, columns=columns)
    else:
        source = pa.memory_map(file)
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
        _check_columns(file, reader.schema.names, columns)
        batches = (
            (reader.get_batch(k) for k in range(reader.num_record_batches))
            if isinstance(reader, pa.ipc.RecordBatchFileReader)
            else reader
        )
    i = 0
    for batch in batches:
        for row in batch.select(columns).to_pylist():
            yield i, row
            i += 1


def _image_path(value, base: str) -> str | None:
    """The file an image value names (a path string, or an Image struct without bytes), resolved
    against `base` (the folder of the file that holds the value); None when the value holds bytes."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return None
        value = value.get("path")
    if isinstance(value, str) and value:
        return value if os.path.isabs(value) else os.path.join(base, value)
    return None


def image_files(path: str, fields: FieldMap | str = "align_anything", *, format: str = "auto") -> Iterator[str]:
    """Every image file the input names (resolved as the readers resolve them, `_image_path`
    against the folder of the file holding the row), in row order: JSONL rows' paths; in parquet
    and Arrow files, Image structs without bytes (``{"bytes": null, "path": ...}``) and path
    strings; nothing for rows that embed their image's bytes or name none. For a cache key
    (data/files_convert.py): the images are not opened; only the image column is read, in batches
    of rows (for parquet, only its ``path`` field of a row group where no row names a path)."""
    fields = FIELD_MAPS[fields] if isinstance(fields, str) else fields
    fmt = detect_format(path) if format == "auto" else format
    for file in _files(path, fmt):
        base = os.path.dirname(os.path.abspath(file))
        if fmt != "jsonl":
            yield from _named_images(file, fmt, fields.image, base)
            continue
        with open(file, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line) if line.strip() else None
                except ValueError:
                    continue
                p = _image_path(row.get(fields.image), base) if isinstance(row, dict) else None
                if p is not None:
                    yield p


def _named_images(file: str, fmt: str, column: str, base: str) -> Iterator[str]:
    """`image_files` of one parquet or Arrow file: the image column read batch by batch."""
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=8 << 20)  # as `_rows` reads it
        _check_columns(file, pf.schema_arrow.names, [column])
        kind = pf.schema_arrow.field(column).type
        if (
            pa.types.is_struct(kind)
            and kind.get_field_index("path") < 0
            or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
        ):
            return  # no path field: every image is inside the file
        for rg in range(pf.num_row_groups):
            if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
                # the paths first (small): a row group naming none needs no bytes read
                if all(
                    b.column(0).field("path").null_count == len(b)
                    for b in pf.iter_batches(batch_size=1024, row_groups=[rg], columns=[f"{column}.path"])
                ):
                    continue
            for b in pf.iter_batches(batch_size=256, row_groups=[rg], columns=[column]):
                yield from _batch_images(b.column(0), base)
        return
    source = pa.memory_map(file)
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
    _check_columns(file, reader.schema.names, [column])
    batches = (
        (reader.get_batch(k) for k in range(reader.num_record_batches))
        if isinstance(reader, pa.ipc.RecordBatchFileReader)
        else reader
    )
    for b in batches:
        yield from _batch_images(b.column(b.schema.get_field_index(column)), base)


def _batch_images(values, base: str) -> Iterator[str]:
    """The files a batch's image values name (`_image_path` of each), without converting bytes to
    Python: a struct's ``bytes`` field only says whether a row has any."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = values.type
    if pa.types.is_struct(kind):
        if kind.get_field_index("path") < 0:
            return
        kids = dict(zip([kind.field(i).name for i in range(kind.num_fields)], values.flatten()))
        paths = kids["path"].to_pylist()  # a null struct: a null path
        b = kids.get("bytes")
        if b is None or pa.types.is_null(b.type):
            has = [False] * len(paths)
        elif (
            pa.types.is_binary(b.type)
            or pa.types.is_large_binary(b.type)
            or pa.types.is_string(b.type)
            or pa.types.is_large_string(b.type)
        ):
            has = pc.fill_null(pc.greater(pc.binary_length(b), 0), False).to_pylist()
        else:
            has = [bool(v) for v in b.to_pylist()]
        for p, h in zip(paths, has):
            if not h:
                f = _image_path({"bytes": None, "path": p}, base)
                if f is not None:
                    yield f
        return
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        for v in values.to_pylist():
            f = _image_path(v, base)
            if f is not None:
                yield f


def _image_bytes(value, base: str) -> tuple[bytes | None, str]:
    """(encoded image bytes or None, what was missing)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), ""
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value), "") if value else (None, "empty bytes")
    if isinstance(value, str) and value:
        p = _image_path(value, base)
        if not os.path.isfile(p):
            return None, f"no file {p}"
        with open(p, "rb") as f:
            return f.read(), ""
    return None, "no image value"


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def _decodes(data: bytes) -> str:
    """'' when `data` decodes as an image (fully: a truncated file fails), else why not."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return ""
    except Exception as e:  # PIL raises many types for bad data
        return f"{type(e).__name__}: {e}"


def _iter(
    path: str, fields: dict, *, fmt: str, on_bad: str, limit: int | None, check_images: bool, meta: tuple, build
) -> tuple[Iterator[dict], BadRecords]:
    """(the records, one at a time, and what was skipped: filled as the records are consumed).
    Arguments are checked now, the files read lazily."""
    if on_bad not in ("skip", "fail"):
        raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    files = _files(path, fmt)
    if not files:
        raise FileNotFoundError(f"{path!r}: no {fmt} files")
    columns = list(dict.fromkeys(list(fields.values()) + list(meta)))
    bad = BadRecords()
    return _records(
        files, fmt, columns, fields, bad, on_bad=on_bad, limit=limit, check_images=check_images, meta=meta, build=build
    ), bad


def _records(files, fmt, columns, fields, bad, *, on_bad, limit, check_images, meta, build) -> Iterator[dict]:
    kept = 0
    for file in files:
        base, stem = os.path.dirname(os.path.abspath(file)), os.path.splitext(os.path.basename(file))[0]
        for i, row in _rows(file, fmt, columns):
            if limit is not None and kept >= limit:
                return
            bad.read += 1
            row_id = f"{stem}-{i}"

            def reject(reason, detail):
                if on_bad == "fail":
                    raise BadRecordError(f"{file}: row {i}: {reason}: {detail}")
                bad.add(row_id, reason, detail)

            if isinstance(row, Exception):
                reject("malformed", str(row))
                continue
            nulls = [ours for ours, col in fields.items() if ours != "image" and row.get(col) is None]
            if nulls:
                reject("missing_field", f"{[fields[k] for k in nulls]} is null")
                continue
            image, why = _image_bytes(row.get(fields["image"]), base)
            if image is None:
                reject("missing_image", why)
                continue
            if check_images:
                why = _decodes(image)
                if why:
                    reject("undecodable_image", why)
                    continue
            rec, reason, detail = build(row)
            if rec is None:
                reject(reason, detail)
                continue
            rec.update(id=row_id, image=image, meta={c: row.get(c) for c in meta})
            kept += 1
            yield rec


def iter_preferences(
    path: str,
    fields: FieldMap | str = "align_anything",
    *,
    format: str = "auto",
    on_bad: str = "skip",
    limit: int | None = None,
    check_images: bool = True,
) -> tuple[Iterator[dict], BadRecords]:
    """`read_preferences` one record at a time: (an iterator over the records, what was skipped,
    counted as the iterator is consumed). Files are read in batches of rows, never whole."""
    fm = FIELD_MAPS[fields] if isinstance(fields, str) else fields
    cols = dict(
        question=fm.question, image=fm.image, response_1=fm.response_1, response_2=fm.response_2, label=fm.label
    )
    values = [str(v) for v in fm.label_values]
    if len(values) != 2 or values[0] == values[1]:
        raise ValueError(f"FieldMap.label_values must be two different values, got {fm.label_values!r}")

    def build(row):
        q, a, b = (str(row[c]) for c in (fm.question, fm.response_1, fm.response_2))
        if not q.strip():
            return None, "empty_text", f"{fm.question!r} is empty"
        for c, text in ((fm.response_1, a), (fm.response_2, b)):
            if not text.strip():
                return None, "empty_text", f"{c!r} is empty"
        label = str(row[fm.label]).strip()
        if label not in values:
            return None, "bad_label", f"{fm.label!r} = {row[fm.label]!r}, expected one of {list(fm.label_values)}"
        return dict(question=q, response_1=a, response_2=b, overall_response=values.index(label) + 1), "", ""

    return _iter(
        path, cols, fmt=format, on_bad=on_bad, limit=limit, check_images=check_images, meta=fm.meta, build=build
    )


def iter_prompts(
    path: str,
    fields: FieldMap | str = "align_anything",
    *,
    format: str = "auto",
    on_bad: str = "skip",
    limit: int | None = None,
    check_images: bool = True,
) -> tuple[Iterator[dict], BadRecords]:
    """`read_prompts` one record at a time (as `iter_preferences`)."""
    fm = FIELD_MAPS[fields] if isinstance(fields, str) else fields

    def build(row):
        q = str(row[fm.question])
        if not q.strip():
            return None, "empty_text", f"{fm.question!r} is empty"
        return dict(question=q), "", ""

    return _iter(
        path,
        dict(question=fm.question, image=fm.image),
        fmt=format,
        on_bad=on_bad,
        limit=limit,
        check_images=check_images,
        meta=fm.meta,
        build=build,
    )


def read_preferences(
    path: str,
    fields: FieldMap | str = "align_anything",
    *,
    format: str = "auto",
    on_bad: str = "skip",
    limit: int | None = None,
    check_images: bool = True,
) -> tuple[list[dict], BadRecords]:
    """Preference records from `path` (module docstring) and what was skipped. `fields`: a
    `FieldMap` or a `FIELD_MAPS` name; `limit`: stop after that many records kept;
    `check_images`: decode every image once (catches corrupt files before training).
    Holds every record (image bytes included): for a whole dataset use `iter_preferences`."""
    recs, bad = iter_preferences(path, fields, format=format, on_bad=on_bad, limit=limit, check_images=check_images)
    return list(recs), bad


def read_prompts(
    path: str,
    fields: FieldMap | str = "align_anything",
    *,
    format: str = "auto",
    on_bad: str = "skip",
    limit: int | None = None,
    check_images: bool = True,
) -> tuple[list[dict], BadRecords]:
    """Prompt records (question + image, for policy RL) from the same files as `read_preferences`:
    the responses and labels are not read."""
    recs, bad = iter_prompts(path, fields, format=format, on_bad=on_bad, limit=limit, check_images=check_images)
    return list(recs), bad
