"""The files `data` stage on several hosts and on reruns (data/files_convert.py): only process 0
converts while process 1 waits and then reads the records process 0 wrote; a crash in the middle
of a conversion leaves nothing that looks finished (not even beside an older dataset), a waiting
process 1 fails with process 0's error, and a rerun converts cleanly; a rerun with the same files
and options does not convert again, a changed file or option does."""

import io
import json
import os
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grlhfv_jax import config as config_schema
from grlhfv_jax.data import files_convert as data_files
from grlhfv_jax.data import files_source as fs
from grlhfv_jax.data import files_tfds

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

WORDS = "red blue green circle square the is are a an big small left right one two three".split()


def _rows(n, tag=""):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        rgb = rng.integers(0, 255, (28, 28, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        rows.append(
            dict(
                question=f"What is in image {k}?{tag}",
                image=buf.getvalue(),
                rgb=rgb,
                response_1=" ".join(rng.choice(WORDS, 3)),
                response_2=" ".join(rng.choice(WORDS, 3)),
                overall_response=1 + k % 2,
            )
        )
    return rows


def _write(path, rows) -> str:
    """`rows` as a hub-style parquet file (Image structs) at `path`."""
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {k: [r[k] for r in rows] for k in ("question", "response_1", "response_2", "overall_response")}
    cols["image"] = pa.array([{"bytes": r["image"], "path": None} for r in rows], img)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from grlhfv_jax.data.tokenizer import train_tokenizer

    out = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    texts = [r[k] for tag in ("", " (new)") for r in _rows(6, tag) for k in ("question", "response_1", "response_2")]
    train_tokenizer(texts * 5, out, vocab_size=400)
    return out


def _config(pairs: str, tok: str, too_long: str = "skip", steps: int = 1):
    c = demo.get_config("smoke")
    c.stages = ("data", "sft")
    c.data = dict(
        kind="files",
        tokenizer_dir=tok,
        too_long=too_long,
        files=dict(grm_train=dict(path=pairs), sft_policy=dict(path=pairs)),
    )
    del c["sft"]["grm"]
    c.sft.policy.update(data="best", pretrained_vision=False, steps=steps, batch_size=2, max_len=96)
    return config_schema.validate(c)


class _Calls(list):
    fail_after: dict

    def __init__(self):
        super().__init__()
        self.fail_after = {}


@pytest.fixture
def writes(monkeypatch):
    """Every `Writer.write_split` call as (thread name, split); `writes.fail_after[split] = k` makes
    that split's records raise OSError after k records (a crash mid-conversion)."""
    calls, original = _Calls(), files_tfds.Writer.write_split

    def write_split(self, split, records):
        calls.append((threading.current_thread().name, split))
        k = calls.fail_after.get(split)
        if k is not None:

            def crashing(records=records):
                for i, r in enumerate(records):
                    if i == k:
                        raise OSError(f"disk full (test) after {k} records of {split}")
                    yield r

            records = crashing()
        return original(self, split, records)

    monkeypatch.setattr(files_tfds.Writer, "write_split", write_split)
    return calls


def _in_thread(fn, **kw):
    """Runs fn(**kw) in a thread; returns (thread, result dict: "value" or "error")."""
    out = {}

    def target():
        try:
            out["value"] = fn(**kw)
        except BaseException as e:  # handed to the test
            out["error"] = e

    t = threading.Thread(target=target, name="process-1")
    t.start()
    return t, out


def _paths(workdir):
    with open(os.path.join(workdir, "data_paths.json")) as f:
        return json.load(f)


def _check_records(dataset_dir, rows, n_splits=("grm_train", "sft_policy")):
    """The dataset's records against the rows written (ids, texts, labels, pixels)."""
    src = fs.FilesSource(dataset_dir, shard=(0, 1))
    for split in n_splits:
        got = src.records(split)
        assert [r["id"] for r in got] == [f"pairs-{k}" for k in range(len(rows))], split
        for g, w in zip(got, rows):
            assert (g["question"], g["response_1"], g["response_2"], g["overall_response"]) == (
                w["question"],
                w["response_1"],
                w["response_2"],
                w["overall_response"],
            )
            np.testing.assert_array_equal(g["image"], w["rgb"])


def _run(cfg, root, index, **kw):
    os.makedirs(root / f"work{index}", exist_ok=True)  # the run's workdir (main.prepare_workdir makes it)
    return data_files.run(
        cfg, str(root / f"work{index}"), str(root / "data"), process_index=index, process_count=2, **kw
    )


def test_only_process_0_converts_and_process_1_reads_what_it_wrote(tok_dir, tmp_path, writes):
    rows = _rows(5)
    cfg = _config(_write(tmp_path / "in" / "pairs.parquet", rows), tok_dir)
    dataset_dir = str(tmp_path / "data" / "files" / "grlhfv_files" / "1.0.0")
    # process 1 alone: writes nothing, and gives up naming the folder it waited for
    with pytest.raises(TimeoutError, match=r"no finished dataset .* in " + dataset_dir.replace(".", r"\.")):
        _run(cfg, tmp_path, 1, stall_s=0.5, poll_s=0.05)
    assert writes == [] and not os.path.exists(dataset_dir) and not os.path.exists(dataset_dir + ".incomplete")
    # process 1 waits while process 0 converts
    t, out = _in_thread(_run, cfg=cfg, root=tmp_path, index=1, stall_s=120, poll_s=0.05)
    s0 = _run(cfg, tmp_path, 0, heartbeat_s=0.05)
    t.join(120)
    assert not t.is_alive() and "error" not in out, out.get("error")
    assert writes == [("MainThread", "grm_train"), ("MainThread", "sft_policy")]  # process 0 only, once
    assert s0["data/grm_train/records"] == s0["data/sft_policy/records"] == 5 and s0["data/grm_train/bad_total"] == 0
    assert out["value"] == s0
    assert _paths(tmp_path / "work1") == _paths(tmp_path / "work0")
    assert _paths(tmp_path / "work1")["dataset_dir"] == dataset_dir
    _check_records(dataset_dir, rows)
    assert not os.path.exists(dataset_dir + ".incomplete")


def test_a_crash_mid_conversion_leaves_nothing_finished_and_a_rerun_converts(tok_dir, tmp_path, writes):
    old, new = _rows(4), _rows(5, tag=" (new)")
    pairs = _write(tmp_path / "in" / "pairs.parquet", old)
    dataset_dir = str(tmp_path / "data" / "files" / "grlhfv_files" / "1.0.0")
    _run(_config(pairs, tok_dir), tmp_path, 0)  # an earlier, finished conversion
    _check_records(dataset_dir, old)
    _write(pairs, new)  # the input changes: convert again, and crash
    cfg = _config(pairs, tok_dir)
    writes.clear()
    writes.fail_after["sft_policy"] = 2  # the second split, after 2 records
    t, out = _in_thread(_run, cfg=cfg, root=tmp_path, index=1, stall_s=120, poll_s=0.05)
    with pytest.raises(OSError, match="disk full"):
        _run(cfg, tmp_path, 0, heartbeat_s=0.05)
    t.join(120)
    assert not t.is_alive()
    assert isinstance(out.get("error"), RuntimeError), out
    assert "process 0 failed converting the splits into " + dataset_dir in str(out["error"])
    assert "disk full (test) after 2 records of sft_policy" in str(out["error"])
    # the partial conversion stays aside; the older dataset is untouched and not taken for this one
    partial = os.listdir(dataset_dir + ".incomplete")
    assert any(n.startswith("grlhfv_files-grm_train.array_record") for n in partial)
    assert files_tfds.MARKER not in partial and "dataset_info.json" not in partial
    _check_records(dataset_dir, old)
    # a process 1 that starts after the failure does not read the old dataset either
    with pytest.raises(TimeoutError, match=r"'failed', key \w+: OSError: disk full \(test\).*already there when"):
        _run(cfg, tmp_path, 1, stall_s=0.5, poll_s=0.05)
    # rerun: converts cleanly
    writes.fail_after.clear()
    writes.clear()
    s = _run(cfg, tmp_path, 0)
    assert [split for _, split in writes] == ["grm_train", "sft_policy"]
    assert s["data/sft_policy/records"] == 5
    _check_records(dataset_dir, new)
    assert not os.path.exists(dataset_dir + ".incomplete")
    assert _run(cfg, tmp_path, 1, stall_s=0.5, poll_s=0.05) == s


def test_a_rerun_converts_again_only_when_a_file_or_option_changed(tok_dir, tmp_path, writes, capsys):
    rows = _rows(5)
    pairs = _write(tmp_path / "in" / "pairs.parquet", rows)
    dataset_dir = str(tmp_path / "data" / "files" / "grlhfv_files" / "1.0.0")
    s = _run(_config(pairs, tok_dir), tmp_path, 0)
    assert len(writes) == 2
    shard = sorted(n for n in os.listdir(dataset_dir) if "array_record" in n)[0]
    mtime = os.stat(os.path.join(dataset_dir, shard)).st_mtime_ns
    capsys.readouterr()
    # the same files and options (a training key changed): nothing converted, the same figures
    assert _run(_config(pairs, tok_dir, steps=3), tmp_path, 0) == s
    assert len(writes) == 2 and os.stat(os.path.join(dataset_dir, shard)).st_mtime_ns == mtime
    assert "not converting again" in capsys.readouterr().out
    _check_records(dataset_dir, rows)
    # an option that changes the records: converted again
    _run(_config(pairs, tok_dir, too_long="truncate"), tmp_path, 0)
    assert len(writes) == 4
    # a changed input file: converted again, with its new records
    new = _rows(5, tag=" (new)")
    _write(pairs, new)
    s2 = _run(_config(pairs, tok_dir, too_long="truncate"), tmp_path, 0)
    assert len(writes) == 6 and s2["data/grm_train/records"] == 5
    _check_records(dataset_dir, new)
    assert _run(_config(pairs, tok_dir, too_long="truncate"), tmp_path, 0) == s2 and len(writes) == 6


def _write_jsonl(path, rows) -> str:
    """`rows` as a JSONL file naming PNG files beside it (images/<k>.png)."""
    os.makedirs(os.path.join(os.path.dirname(path), "images"), exist_ok=True)
    with open(path, "w") as f:
        for k, r in enumerate(rows):
            with open(os.path.join(os.path.dirname(path), "images", f"{k}.png"), "wb") as g:
                g.write(r["image"])
            f.write(
                json.dumps(
                    dict(
                        {c: r[c] for c in ("question", "response_1", "response_2", "overall_response")},
                        image=f"images/{k}.png",
                    )
                )
                + "\n"
            )
    return str(path)


def test_a_replaced_image_file_a_jsonl_names_converts_again(tok_dir, tmp_path, writes, capsys):
    """The cache key holds the size and mtime of every image file a JSONL split names: replacing
    one (the JSONL untouched) converts again, with its new pixels; unchanged files reuse."""
    rows = _rows(4)
    pairs = _write_jsonl(tmp_path / "in" / "pairs.jsonl", rows)
    dataset_dir = str(tmp_path / "data" / "files" / "grlhfv_files" / "1.0.0")
    cfg = _config(pairs, tok_dir)
    _run(cfg, tmp_path, 0)
    assert len(writes) == 2
    _run(cfg, tmp_path, 0)
    assert len(writes) == 2 and "not converting again" in capsys.readouterr().out
    # another image of another size in place of image 2
    rgb = np.full((20, 24, 3), 200, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    jsonl_mtime = os.stat(pairs).st_mtime_ns
    with open(tmp_path / "in" / "images" / "2.png", "wb") as f:
        f.write(buf.getvalue())
    assert os.stat(pairs).st_mtime_ns == jsonl_mtime
    _run(cfg, tmp_path, 0)
    assert len(writes) == 4
    rows[2] = dict(rows[2], image=buf.getvalue(), rgb=rgb)
    _check_records(dataset_dir, rows)
    _run(cfg, tmp_path, 0)
    assert len(writes) == 4  # unchanged: reused
    # the same size, a new mtime (the same bytes rewritten later): converted again
    st = os.stat(tmp_path / "in" / "images" / "0.png")
    os.utime(tmp_path / "in" / "images" / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _run(cfg, tmp_path, 0)
    assert len(writes) == 6
    _run(cfg, tmp_path, 0)
    assert len(writes) == 6
    # parquet splits (images inside the files): no image files in the key
    inputs = data_files.conversion_inputs(_config(_write(tmp_path / "pq" / "pairs.parquet", rows), tok_dir))
    assert all(s["image_files"] == {} for s in inputs["splits"].values())
    inputs = data_files.conversion_inputs(cfg)
    assert inputs["splits"]["grm_train"]["image_files"]["count"] == 4


def _write_named(root, rows, fmt) -> str:
    """`rows` as Image structs without bytes naming PNG files in `root`/images (relative to the data
    file's folder), all but row 0, which embeds its bytes: `root`/pairs.parquet, or a
    datasets.save_to_disk folder `root`/arrow (the images beside it, not in it)."""
    os.makedirs(root / "images", exist_ok=True)
    images, rel = [], "images" if fmt == "parquet" else "../images"
    for k, r in enumerate(rows):
        (root / "images" / f"{k}.png").write_bytes(r["image"])
        images.append({"bytes": r["image"], "path": None} if k == 0 else {"bytes": None, "path": f"{rel}/{k}.png"})
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {k: [r[k] for r in rows] for k in ("question", "response_1", "response_2", "overall_response")}
    table = pa.table(dict(cols, image=pa.array(images, img)))
    if fmt == "parquet":
        pq.write_table(table, root / "pairs.parquet")
        return str(root / "pairs.parquet")
    os.makedirs(root / "arrow")
    with pa.OSFile(str(root / "arrow" / "pairs.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (root / "arrow" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "pairs.arrow"}]}))
    return str(root / "arrow")


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_replaced_image_file_a_parquet_or_arrow_split_names_converts_again(tok_dir, tmp_path, writes, capsys, fmt):
    """Image structs without bytes in a parquet file or an Arrow folder: the files they name are in
    the cache key as a JSONL's are (the data file untouched, a replaced image converts again, with
    its new pixels); a row that embeds its bytes names no file."""
    rows = _rows(4)
    pairs = _write_named(tmp_path / "in", rows, fmt)
    dataset_dir = str(tmp_path / "data" / "files" / "grlhfv_files" / "1.0.0")
    cfg = _config(pairs, tok_dir)
    key = data_files.conversion_key(data_files.conversion_inputs(cfg))
    assert data_files.conversion_inputs(cfg)["splits"]["grm_train"]["image_files"]["count"] == 3  # not row 0
    _run(cfg, tmp_path, 0)
    assert len(writes) == 2
    _check_records(dataset_dir, rows)
    _run(cfg, tmp_path, 0)
    assert len(writes) == 2 and "not converting again" in capsys.readouterr().out
    # another image of another size in place of image 2, the data file untouched
    rgb = np.full((20, 24, 3), 200, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data_stats = data_files._stats(pairs)
    with open(tmp_path / "in" / "images" / "2.png", "wb") as f:
        f.write(buf.getvalue())
    assert data_files._stats(pairs) == data_stats
    assert data_files.conversion_key(data_files.conversion_inputs(cfg)) != key
    _run(cfg, tmp_path, 0)
    assert len(writes) == 4
    rows[2] = dict(rows[2], image=buf.getvalue(), rgb=rgb)
    _check_records(dataset_dir, rows)
    _run(cfg, tmp_path, 0)
    assert len(writes) == 4  # unchanged: reused
    # the file of row 0 (whose bytes are embedded) is not read: replacing it changes nothing
    (tmp_path / "in" / "images" / "0.png").write_bytes(buf.getvalue())
    _run(cfg, tmp_path, 0)
    assert len(writes) == 4
