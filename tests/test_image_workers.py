"""The image processor in the data read threads (config.data.image_workers > 0, files runs): the
batches' records carry the processor's patches (processing.PreparedImage) and the stages' examples
built from them equal, bitwise, those built the old way (processor in the step), for images of two
sizes, pairs and GRM prompts; the processor is then not called on the main thread; a processor with
other settings recomputes; a stored image that does not decode is a clear error naming the record.
The evaluations' records (`FilesSource.records`): decoded in the threads, not processed (a stage keeps
the list; the patches would stay with it), the same list in the same order as read on the main thread,
and the stages' encodings of them (pairs, GRM prompts, the RM's scored rows) the same bitwise."""

import io
import os
import sys
import threading
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grlhfv_jax import config as config_schema
from grlhfv_jax import encoding, processing
from grlhfv_jax.config import sections
from grlhfv_jax.data import files_source as fs
from grlhfv_jax.rollout import grm_judge, group_sampling

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

WORDS = "red blue green circle square the is are a an big small left right one two three".split()
IMAGE = config_schema.typed_section(
    sections.IMAGE,
    dict(min_pixels=28 * 28, max_pixels=84 * 84, patch_size=14, merge_size=2, temporal_patch_size=2),
    "image",
)
SIZES = ((40, 56), (70, 90))  # two sizes: two different patch grids


def _rows(n):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        h, w = SIZES[k % 2]
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(buf, format="PNG" if k % 3 else "JPEG")
        rows.append(
            dict(
                question=f"What is in image {k}?",
                image={"bytes": buf.getvalue(), "path": None},
                response_1=" ".join(rng.choice(WORDS, 3)),
                response_2=" ".join(rng.choice(WORDS, 4)),
                overall_response=1 + k % 2,
            )
        )
    return rows


def _convert(root, rows, **spec):
    pq.write_table(pa.Table.from_pylist(rows), root / "pairs.parquet")
    split = fs.SplitFiles(str(root / "pairs.parquet"), **spec)
    dataset_dir, _ = fs.write_splits(str(root / "tfds"), {"grm_train": split, "policy_train": split})
    return dataset_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from grlhfv_jax.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("image_workers")
    rows = _rows(10)
    dataset_dir = _convert(root, rows)
    texts = [r[k] for r in rows for k in ("question", "response_1", "response_2")]
    train_tokenizer(texts * 5, str(root / "tok"), vocab_size=400)
    codec = encoding.Codec.from_dirs(str(root / "tok"), IMAGE, demo.DEMO_GRM_TEMPLATE)
    return dataset_dir, codec


def _examples(codec, recs):
    ex = encoding.pair_examples(codec, recs)
    ex += [codec.grm_example(r["question"], r["image"], r["response_1"], r["response_2"], "judgment") for r in recs]
    ex += [codec.example(r["question"], r["image"]) for r in recs]
    return ex


@pytest.fixture
def calls(monkeypatch):
    """The thread of every call of the image processor (any instance of its class)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    seen, original = [], Qwen2VLImageProcessorPil.__call__

    def spy(self, *a, **kw):
        seen.append(threading.current_thread() is threading.main_thread())
        return original(self, *a, **kw)

    monkeypatch.setattr(Qwen2VLImageProcessorPil, "__call__", spy)
    return seen


def test_batches_with_the_processor_in_the_read_threads_equal_the_old_ones(setup, calls):
    from grlhfv_jax.data import files_convert as data_files

    dataset_dir, codec = setup
    old = fs.FilesSource(dataset_dir, shard=(0, 1)).dataset("grm_train", seed=3, batch_size=4)
    src = data_files.source({"dataset_dir": dataset_dir}, 0, 2, encoding.image_processor(IMAGE))
    new = src.dataset("grm_train", seed=3, batch_size=4)
    assert isinstance(new, fs.Prefetched) and new.threads == 2
    with new:  # its read-ahead stops at the end: no processor call outlives the test
        _compare_batches(codec, old, new, calls)


def _compare_batches(codec, old, new, calls):
    grids = set()
    for step in range(4):  # 16 records of 10: an epoch boundary too
        a, b = old[step], new[step]
        assert [r["id"] for r in a] == [r["id"] for r in b]
        for ra, rb in zip(a, b):  # every other field as before; the image the same pixels
            assert ra.keys() == rb.keys()
            assert isinstance(rb["image"], processing.PreparedImage) and rb["image"].prepared is not None
            np.testing.assert_array_equal(np.asarray(rb["image"]), ra["image"])
            assert all(ra[k] == rb[k] for k in ra if k != "image")
        del calls[:]
        ex_new = _examples(codec, b)
        assert not any(calls)  # no processor call on the main thread (the read threads go on ahead)
        ex_old = _examples(codec, a)
        assert sum(calls) == len(ex_old)  # the old way: once per example, on the main thread
        for x, y in zip(ex_old, ex_new):
            assert x.keys() == y.keys()
            for k in x:  # bitwise
                assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
                assert x[k].tobytes() == y[k].tobytes(), k
            grids.add(tuple(y["image_grid_thw"].ravel()))
        for side in ("left", "right"):
            bo = encoding.batch(ex_old, codec, side=side, max_len=256)
            bn = encoding.batch(ex_new, codec, side=side, max_len=256)
            for k in ("input_ids", "pixel_values", "image_grid_thw"):
                assert bo[k].tobytes() == bn[k].tobytes(), k
    assert len(grids) == 2  # two image sizes, two grids


def test_the_read_threads_process_images_off_the_main_thread(setup, calls):
    dataset_dir, codec = setup
    src = fs.FilesSource(dataset_dir, shard=(0, 1), image_processor=encoding.image_processor(IMAGE), image_workers=2)
    with src.dataset("policy_train", seed=0, batch_size=4) as ds:
        for step in range(3):
            recs = ds[step]
            [codec.example(r["question"], r["image"]) for r in recs]
    assert calls and not any(calls)  # every call in a read thread, none on the main thread


def test_a_processor_with_other_settings_processes_again(setup):
    dataset_dir, codec = setup
    src = fs.FilesSource(dataset_dir, shard=(0, 1), image_processor=encoding.image_processor(IMAGE), image_workers=1)
    with src.dataset("grm_train", seed=0, batch_size=2) as ds:
        r = ds[0][0]
    other = encoding.image_processor(IMAGE.replace(max_pixels=56 * 56))
    assert r["image"].patches(other) is None and r["image"].patches(codec.image_processor) is not None
    text = processing.chat_prompt(r["question"], tokenizer=codec.tokenizer)
    got = processing.encode_example(codec.tokenizer, other, text, [r["image"]])
    want = processing.encode_example(codec.tokenizer, other, text, [np.asarray(r["image"])])
    for k in want:
        assert got[k].tobytes() == want[k].tobytes(), k
    assert r["image"][:10].prepared is None  # a crop is a plain image


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stored_image_that_does_not_decode_is_an_error_naming_the_record(tmp_path, workers):
    rows = _rows(4)
    rows[2]["image"] = {"bytes": rows[2]["image"]["bytes"][:40], "path": None}  # truncated
    # the data stage checks images when converting (skip or fail, counted): stored unchecked here
    dataset_dir = _convert(tmp_path, rows, check_images=False)
    src = fs.FilesSource(
        dataset_dir, shard=(0, 1), image_processor=encoding.image_processor(IMAGE), image_workers=workers
    )
    ds = src.dataset("grm_train", seed=0, batch_size=4)
    with pytest.raises(ValueError, match=r"record 'pairs-2'.*does not decode"):
        ds[0]
    if isinstance(ds, fs.Prefetched):
        ds.close()


def test_closing_a_read_ahead_dataset_leaves_no_read_running(setup, calls):
    """The flaky records test's cause: a `Prefetched` dataset's read threads went on decoding and
    processing the next batches after the test that made it had ended, and their processor calls
    landed in the next test's spy (`[False, False]`, under the full suite's load only). `close`
    returns once no read is running: no call after it, however long the threads were delayed."""
    import time

    dataset_dir, _ = setup
    src = fs.FilesSource(dataset_dir, shard=(0, 1), image_processor=encoding.image_processor(IMAGE), image_workers=2)
    for _ in range(3):
        ds = src.dataset("grm_train", seed=1, batch_size=4)
        ds[0]  # the threads now read steps 1 and 2 ahead
        ds.close()
        del calls[:]
        time.sleep(0.2)
        assert calls == []
        ds[5]  # a closed dataset reads again where asked (a fresh read-ahead)
        ds.close()


def _same_records(serial, threaded):
    assert [r["id"] for r in threaded] == [r["id"] for r in serial]
    for a, b in zip(serial, threaded):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] for k in a if k != "image")
        assert not isinstance(b["image"], processing.PreparedImage)  # no patches kept with the list
        assert b["image"].dtype == a["image"].dtype and b["image"].tobytes() == a["image"].tobytes()


@pytest.mark.parametrize("threads,workers", [(2, 0), (0, 2), (3, 1)])
def test_records_in_threads_equal_the_serial_ones_in_order(setup, calls, monkeypatch, threads, workers):
    from grlhfv_jax.stages import judging

    dataset_dir, codec = setup
    proc = encoding.image_processor(IMAGE)
    for shard, n in (((0, 1), None), ((1, 2), 9), ((0, 3), 7)):
        for split in ("grm_train", "policy_train"):
            serial = fs.FilesSource(dataset_dir, shard=shard).records(split, n)
            src = fs.FilesSource(
                dataset_dir, shard=shard, read_threads=threads, image_processor=proc, image_workers=workers
            )
            del calls[:]
            threaded = src.records(split, n)
            assert calls == []  # decoded only: the processor runs when a stage encodes them
            _same_records(serial, threaded)
            assert len(threaded) == len(range(shard[0], 10 if n is None else n, shard[1]))
    serial = fs.FilesSource(dataset_dir, shard=(0, 1)).records("grm_train")
    threaded = fs.FilesSource(
        dataset_dir, shard=(0, 1), read_threads=threads, image_processor=proc, image_workers=workers
    ).records("grm_train")
    del calls[:]
    ex_new = _examples(codec, threaded)
    # the RM evaluation's rows (judging.rm_scores: codec.example per response), the model call stubbed
    batches = []
    monkeypatch.setattr(judging, "score_batch", lambda rm, b, rows=None: batches.append(b) or np.zeros(rows))
    judging.rm_accuracy(None, codec, threaded, rows=4, max_len=256)

    # the GRM evaluation's prompts (grm_rl: judging.grm_accuracy with a GRMJudge), generation stubbed
    class Engine:
        model_split = None  # EngineRollout.model_split (not frozen: none)

        def generate(self, b, params):
            batches.append(b)
            rows = len(b["input_ids"]) * int(params.num_samples)
            return types.SimpleNamespace(tokens=np.zeros((rows, 1), np.int32), lengths=np.zeros(rows, np.int32))

    monkeypatch.setattr(group_sampling, "engine_rollout", lambda *a, **kw: Engine())
    judging.grm_accuracy(grm_judge.GRMJudge(None, codec, rows=4, max_len=512), threaded, max_new_tokens=4)
    rm_new, batches = batches, []
    ex_old = _examples(codec, serial)
    judging.rm_accuracy(None, codec, serial, rows=4, max_len=256)
    judging.grm_accuracy(grm_judge.GRMJudge(None, codec, rows=4, max_len=512), serial, max_new_tokens=4)
    assert len(ex_old) == len(ex_new)
    for x, y in zip(ex_old, ex_new):
        assert x.keys() == y.keys()
        for k in x:  # bitwise
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and x[k].tobytes() == y[k].tobytes(), k
    assert len(rm_new) == len(batches) == 5 + 2 * 3  # 20 RM rows by 4; 10 pairs by 4, both orders
    for bo, bn in zip(batches, rm_new):  # the RM's batches, then the GRM's
        assert bo.keys() == bn.keys()
        for k in ("input_ids", "pixel_values", "image_grid_thw"):
            assert bo[k].tobytes() == bn[k].tobytes(), k


@pytest.mark.parametrize("threads,workers", [(2, 0), (0, 2)])
def test_records_in_threads_name_a_record_whose_image_does_not_decode(tmp_path, threads, workers):
    rows = _rows(12)
    rows[9]["image"] = {"bytes": rows[9]["image"]["bytes"][:40], "path": None}  # truncated
    dataset_dir = _convert(tmp_path, rows, check_images=False)
    src = fs.FilesSource(
        dataset_dir,
        shard=(0, 1),
        read_threads=threads,
        image_processor=encoding.image_processor(IMAGE),
        image_workers=workers,
    )
    assert len(src.records("grm_train", 9)) == 9
    with pytest.raises(ValueError, match=r"record 'pairs-9'.*does not decode"):
        src.records("grm_train")


def test_the_data_stage_skips_a_corrupt_image_with_workers_on(tmp_path):
    """What the 'data' stage does with a corrupt image (skip, counted) is unchanged: the image
    workers only read what it converted."""
    rows = _rows(4)
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    recs, bad = fs.read_split("grm_train", fs.SplitFiles(str(tmp_path / "pairs.parquet")))
    assert len(recs) == 3 and dict(bad.counts) == {"undecodable_image": 1}


def test_bench_images_runs_and_reports_both_settings():
    from grlhfv_jax.data import bench_images

    out = bench_images.main(["--images", "2", "--size", "40x30", "--workers", "1", "--steps", "2"])
    for name in ("in_step", "read_threads"):
        assert set(out[name]) == {"encode_s", "wait_s", "main_s", "patches_per_batch"}
    assert out["in_step"]["patches_per_batch"] == out["read_threads"]["patches_per_batch"] > 0
    out = bench_images.main(["--images", "2", "--size", "40x30", "--workers", "1", "--steps", "1", "--records", "3"])
    for name in ("records_serial", "records_threads"):
        assert set(out[name]) == {"read_s", "encode_s", "main_s", "records"} and out[name]["records"] == 3
