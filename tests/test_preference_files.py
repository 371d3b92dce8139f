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


GOOD = [dict(question=f"What is in image {k}?", image=_png(k), response_1=f"a{k}", response_2=f"b{k}",
             overall_response=lab, category=f"c{k}") for k, lab in enumerate([1, 2, 2, 1])]
BAD = {  # reason -> a row that has it
    "bad_label": dict(GOOD[0], overall_response=3),
    "empty_text": dict(GOOD[1], response_2="   "),
    "undecodable_image": dict(GOOD[2], image=b"\x89PNG not really"),
    "missing_image": dict(GOOD[3], image=None),
    "missing_field": dict(GOOD[0], question=None),
}
ROWS = GOOD[:2] + list(BAD.values()) + GOOD[2:]   # good rows on both sides of the bad ones


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
    with pa.OSFile(str(root / "arrow" / "data-00000-of-00001.arrow"), "wb") as f, \
            pa.ipc.new_stream(f, _table(ROWS).schema) as w:
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
    return [(r["question"], r["image"], r["response_1"], r["response_2"], r["overall_response"], r["meta"])
            for r in records]


def test_every_format_loads_the_same_records_and_counts_the_bad_ones(on_disk):
    fm = pf.FieldMap(meta=("category",))
    want = [(g["question"], g["image"], g["response_1"], g["response_2"], g["overall_response"],
             {"category": g["category"]}) for g in GOOD]
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
    with pytest.raises(pf.BadRecordError, match=r"train-00000-of-00002.parquet: row 2: bad_label: 'overall_response' = 3"):
        pf.read_preferences(on_disk["parquet"], on_bad="fail")
    with pytest.raises(pf.BadRecordError, match=r"train.jsonl: row 1: malformed"):
        pf.read_preferences(on_disk["jsonl"], on_bad="fail")


def test_prompts_limit_and_field_maps(on_disk, tmp_path):
    prompts, bad = pf.read_prompts(on_disk["arrow"])
    # labels and responses are not read: the bad label and the empty response are good prompts
    assert [p["question"] for p in prompts] == [r["question"] for r in ROWS
                                                if r["question"] and r["image"] and r is not BAD["undecodable_image"]]
    assert dict(bad.counts) == {"undecodable_image": 1, "missing_image": 1, "missing_field": 1}
    assert len(pf.read_preferences(on_disk["arrow"], limit=3)[0]) == 3
    # a field map that does not fit: the missing column is named, in either mode
    with pytest.raises(KeyError, match="more_helpful_response_id"):
        pf.read_preferences(on_disk["parquet"], "beavertails_v_helpful")
    # BeaverTails-V's columns, labels 0 / 1 (label_values), the other label kept as metadata
    rows = [dict(question="q", image={"bytes": _png(9), "path": None}, response_1="x", response_2="y",
                 more_helpful_response_id=h, safer_response_id=s, category="c") for h, s in ((0, 1), (1, 0))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bt.parquet")
    fm = pf.FieldMap(label="more_helpful_response_id", label_values=(0, 1), meta=("safer_response_id",))
    recs, _ = pf.read_preferences(str(tmp_path / "bt.parquet"), fm)
    assert [r["overall_response"] for r in recs] == [1, 2]
    assert [r["meta"]["safer_response_id"] for r in recs] == [1, 0]
    with pytest.raises(ValueError, match="on_bad"):
        pf.read_preferences(on_disk["arrow"], on_bad="ignore")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pf.read_preferences(str(tmp_path / "nowhere.parquet"))
