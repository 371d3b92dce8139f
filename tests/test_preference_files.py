"""Preference data on disk (grlhfv_jax.data.preference_files): the same tiny dataset written by
the test as hub parquet (image structs), a datasets.save_to_disk arrow folder and JSONL + image
files loads into identical records; every kind of bad record is skipped and counted, or stops the
read with the file, row and reason."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grlhfv_jax.data import preference_files as pf


def _png(seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


GOOD = [
    dict(
        question=f"What is in image {k}?",
        image=_png(k),
        response_1=f"a{k}",
        response_2=f"b{k}",
        overall_response=lab,
        category=f"c{k}",
    )
    for k, lab in enumerate([1, 2, 2, 1])
]
BAD = {  # reason -> a row that has it
    "bad_label": dict(GOOD[0], overall_response=3),
    "empty_text": dict(GOOD[1], response_2="   "),
    "undecodable_image": dict(GOOD[2], image=b"\x89PNG not really"),
    "missing_image": dict(GOOD[3], image=None),
    "missing_field": dict(GOOD[0], question=None),
}
ROWS = GOOD[:2] + list(BAD.values()) + GOOD[2:]  # good rows on both sides of the bad ones


def _table(rows):
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {k: [r[k] for r in rows] for k in ("question", "response_1", "response_2", "overall_response", "category")}
    cols["image"] = pa.array([{"bytes": r["image"], "path": None} if r["image"] else None for r in rows], img)
    return pa.table(cols)


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    # the hub's layout: data/<split>-0000x-of-0000n.parquet, two shards
    os.makedirs(root / "hub" / "data")
    pq.write_table(_table(ROWS[:4]), root / "hub" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(_table(ROWS[4:]), root / "hub" / "data" / "train-00001-of-00002.parquet")
    # datasets.save_to_disk: Arrow IPC stream shards listed in state.json
    os.makedirs(root / "arrow")
    with (
        pa.OSFile(str(root / "arrow" / "data-00000-of-00001.arrow"), "wb") as f,
        pa.ipc.new_stream(f, _table(ROWS).schema) as w,
    ):
        w.write_table(_table(ROWS))
    (root / "arrow" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    # JSONL with image paths relative to the file, and one line that is not JSON
    os.makedirs(root / "jsonl" / "images")
    lines = []
    for k, r in enumerate(ROWS):
        rel = f"images/{k}.png"
        if r["image"] is not None:
            (root / "jsonl" / rel).write_bytes(r["image"])
        lines.append(json.dumps(dict({c: v for c, v in r.items() if c != "image"}, image=rel)))
    lines.insert(1, "{not json")
    (root / "jsonl" / "train.jsonl").write_text("\n".join(lines) + "\n")
    return {"parquet": str(root / "hub"), "arrow": str(root / "arrow"), "jsonl": str(root / "jsonl" / "train.jsonl")}


def _content(records):
    return [
        (r["question"], r["image"], r["response_1"], r["response_2"], r["overall_response"], r["meta"]) for r in records
    ]


def test_every_format_loads_the_same_records_and_counts_the_bad_ones(on_disk):
    fm = pf.FieldMap(meta=("category",))
    want = [
        (
            g["question"],
            g["image"],
            g["response_1"],
            g["response_2"],
            g["overall_response"],
            {"category": g["category"]},
        )
        for g in GOOD
    ]
    for fmt, path in on_disk.items():
        assert pf.detect_format(path) == fmt
        records, bad = pf.read_preferences(path, fm)
        assert _content(records) == want, fmt
        assert len({r["id"] for r in records}) == len(records)
        extra = {"malformed": 1} if fmt == "jsonl" else {}
        assert dict(bad.counts) == dict({r: 1 for r in BAD}, **extra), fmt
        assert bad.read == len(ROWS) + len(extra)
        s = bad.summary()
        assert s["data/bad_total"] == len(BAD) + len(extra) and s["data/rows_read"] == bad.read
        assert {reason for _, reason, _ in bad.examples} == set(BAD) | set(extra)


def test_fail_mode_names_file_row_and_reason(on_disk):
    with pytest.raises(
        pf.BadRecordError, match=r"train-00000-of-00002.parquet: row 2: bad_label: 'overall_response' = 3"
    ):
        pf.read_preferences(on_disk["parquet"], on_bad="fail")
    with pytest.raises(pf.BadRecordError, match=r"train.jsonl: row 1: malformed"):
        pf.read_preferences(on_disk["jsonl"], on_bad="fail")


def test_prompts_limit_and_field_maps(on_disk, tmp_path):
    prompts, bad = pf.read_prompts(on_disk["arrow"])
    # labels and responses are not read: the bad label and the empty response are good prompts
    assert [p["question"] for p in prompts] == [
        r["question"] for r in ROWS if r["question"] and r["image"] and r is not BAD["undecodable_image"]
    ]
    assert dict(bad.counts) == {"undecodable_image": 1, "missing_image": 1, "missing_field": 1}
    assert len(pf.read_preferences(on_disk["arrow"], limit=3)[0]) == 3
    # a field map that does not fit: the missing column is named, in either mode
    with pytest.raises(KeyError, match="more_helpful_response_id"):
        pf.read_preferences(on_disk["parquet"], "beavertails_v_helpful")
    # BeaverTails-V's columns, labels 0 / 1 (label_values), the other label kept as metadata
    rows = [
        dict(
            question="q",
            image={"bytes": _png(9), "path": None},
            response_1="x",
            response_2="y",
            more_helpful_response_id=h,
            safer_response_id=s,
            category="c",
        )
        for h, s in ((0, 1), (1, 0))
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bt.parquet")
    fm = pf.FieldMap(label="more_helpful_response_id", label_values=(0, 1), meta=("safer_response_id",))
    recs, _ = pf.read_preferences(str(tmp_path / "bt.parquet"), fm)
    assert [r["overall_response"] for r in recs] == [1, 2]
    assert [r["meta"]["safer_response_id"] for r in recs] == [1, 0]
    with pytest.raises(ValueError, match="on_bad"):
        pf.read_preferences(on_disk["arrow"], on_bad="ignore")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pf.read_preferences(str(tmp_path / "nowhere.parquet"))


def test_image_files_names_what_parquet_and_arrow_rows_name_by_path(tmp_path, monkeypatch):
    """`image_files` for parquet and Arrow: the Image structs without bytes and the path strings,
    resolved against the folder of the file holding them, as the readers resolve them; rows that
    embed bytes (with or without a path beside them), null images and a binary column name none."""
    os.makedirs(tmp_path / "sub" / "images")
    files = []
    for k in range(4):
        (tmp_path / "sub" / "images" / f"{k}.png").write_bytes(_png(20 + k))
        files.append(str(tmp_path / "sub" / "images" / f"{k}.png"))
    absolute = str(tmp_path / "elsewhere.png")
    with open(absolute, "wb") as f:
        f.write(_png(30))
    images = [
        {"bytes": _png(1), "path": None},  # embedded: nothing
        {"bytes": _png(3), "path": None},
        {"bytes": _png(2), "path": "images/3.png"},  # bytes win: nothing
        None,  # no image (skipped by the reader)
        {"bytes": b"", "path": "images/1.png"},  # empty bytes: the path
        {"bytes": None, "path": absolute},
        {"bytes": None, "path": "images/0.png"},  # relative to the file's folder
        {"bytes": None, "path": "images/2.png"},
    ]
    want = [files[1], absolute, files[0], files[2]]
    rows = [dict(GOOD[k % 4], image=None) for k in range(len(images))]
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {c: [r[c] for r in rows] for c in ("question", "response_1", "response_2", "overall_response")}
    table = pa.table(dict(cols, image=pa.array(images, img)))
    # parquet, row groups of 2: the first holds embedded images only (its bytes are not read)
    pq.write_table(table, tmp_path / "sub" / "pairs.parquet", row_group_size=2)
    # a datasets.save_to_disk folder: the stream beside the images
    with (
        pa.OSFile(str(tmp_path / "sub" / "data-00000-of-00001.arrow"), "wb") as f,
        pa.ipc.new_stream(f, table.schema) as w,
    ):
        w.write_table(table, max_chunksize=3)
    (tmp_path / "sub" / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    reads, iter_batches = [], pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        reads.append((tuple(kw.get("row_groups") or ()), tuple(kw.get("columns") or ())))
        return iter_batches(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert list(pf.image_files(str(tmp_path / "sub" / "pairs.parquet"))) == want
    assert ((0,), ("image",)) not in reads and ((1,), ("image",)) in reads  # no path in row group 0: no bytes read
    monkeypatch.undo()
    for path, fmt in ((tmp_path / "sub" / "pairs.parquet", "auto"), (tmp_path / "sub", "arrow")):
        assert list(pf.image_files(str(path), format=fmt)) == want, fmt
        recs, bad = pf.read_preferences(str(path), format=fmt)  # the readers read those very files
        named = [r["image"] for r in recs if r["image"] not in (_png(1), _png(2), _png(3))]
        assert named == [open(p, "rb").read() for p in want] and dict(bad.counts) == {"missing_image": 1}, fmt
    # path strings, and a binary column (images inside the file)
    pq.write_table(pa.table(dict(cols, image=[None, "images/3.png", "", absolute] * 2)), tmp_path / "sub" / "s.parquet")
    assert list(pf.image_files(str(tmp_path / "sub" / "s.parquet"))) == [files[3], absolute] * 2
    pq.write_table(pa.table(dict(cols, image=[_png(k) for k in range(8)])), tmp_path / "b.parquet")
    assert list(pf.image_files(str(tmp_path / "b.parquet"))) == []
    # a hub folder of shards: each shard's paths against its own folder
    os.makedirs(tmp_path / "hub" / "data" / "images")
    (tmp_path / "hub" / "data" / "images" / "0.png").write_bytes(_png(5))
    pq.write_table(table.slice(5, 2), tmp_path / "hub" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(
        pa.table(dict({c: v[:1] for c, v in cols.items()}, image=pa.array([images[6]], img))),
        tmp_path / "hub" / "data" / "train-00001-of-00002.parquet",
    )
    hub0 = str(tmp_path / "hub" / "data" / "images" / "0.png")
    assert list(pf.image_files(str(tmp_path / "hub"))) == [absolute, hub0, hub0]
