"""Preference files converted to TFDS array_record and read through grain (data/files_tfds.py,
data/files_source.py): the records read back are the cleaned split's (texts, labels, metadata,
image bytes byte-identical, JPEG and PNG), written as several shards; two hosts read disjoint
shares that cover the split; a reader resumed at a step (or from grain's iterator state) yields
the batches an uninterrupted one yields."""

import glob
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grlhfv_jax.data import files_source as fs
from grlhfv_jax.data import preference_files as pf

FIELDS = pf.FieldMap(meta=("category",))


def _image(seed, fmt):
    rgb = np.random.default_rng(seed).integers(0, 255, (12 + seed % 3, 16, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return rgb, buf.getvalue()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """12 pairs as hub parquet (Image structs, JPEG and PNG; row 3 has a bad label), converted into
    shards of ~4 kB. Returns (the rows, the split's spec, the dataset folder, what was skipped)."""
    root = tmp_path_factory.mktemp("files_grain")
    rows = []
    for k in range(12):
        rgb, data = _image(k, "JPEG" if k % 2 else "PNG")
        rows.append(
            dict(
                question=f"What is in image {k}?",
                image={"bytes": data, "path": None},
                rgb=rgb,
                response_1=f"first answer {k}",
                response_2=f"second answer {k}",
                overall_response=9 if k == 3 else 1 + k % 2,
                category=f"c{k % 3}",
            )
        )
    table = pa.Table.from_pylist([{c: v for c, v in r.items() if c != "rgb"} for r in rows])
    pq.write_table(table, root / "pairs.parquet", row_group_size=5)
    spec = fs.SplitFiles(str(root / "pairs.parquet"), fields=FIELDS)
    dataset_dir, bad = fs.write_splits(str(root / "tfds"), {"grm_train": spec, "policy_train": spec}, shard_bytes=4096)
    return rows, spec, dataset_dir, bad


def test_array_record_holds_what_the_cleaned_split_held(converted):
    rows, spec, d, bad = converted
    held, _ = fs.read_split("grm_train", spec)  # the cleaned split: image bytes as read
    assert len(held) == 11 and dict(bad["grm_train"].counts) == {"bad_label": 1}
    assert len(glob.glob(os.path.join(d, "grlhfv_files-grm_train.array_record-*"))) > 1
    src = fs.FilesSource(d, shard=(0, 1))
    raw = src.source("grm_train")
    assert [bytes(raw[i]["image"]) for i in range(len(raw))] == [r["image"] for r in held]  # byte-identical
    back = src.records("grm_train")
    assert len(back) == len(held)
    originals = [r for r in rows if r["overall_response"] in (1, 2)]
    for got, want, row in zip(back, held, originals):
        for k in ("id", "question", "response_1", "response_2", "overall_response", "answer", "meta"):
            assert got[k] == want[k], k
        assert got["image"].dtype == np.uint8 and got["image"].shape == row["rgb"].shape
        np.testing.assert_array_equal(got["image"], fs.decode_image(want["image"]))
        if want["image"][:4] == b"\x89PNG":
            np.testing.assert_array_equal(got["image"], row["rgb"])  # lossless: the pixels written
    assert back[4]["meta"] == {"category": "c2"} and back[4]["answer"] == "second answer 5"  # row 5 prefers response 2
    prompts = src.records("policy_train", n=5)  # prompts: no label read, none skipped
    assert len(prompts) == 5 and set(prompts[3]) == {"id", "question", "image", "meta"}
    assert prompts[3]["question"] == "What is in image 3?"
    with pytest.raises(KeyError, match=r"config\.data\.files\.grm_test_id\.path"):
        src.records("grm_test_id")
    assert src.records("grm_test_id", n=0) == []  # grm_rl with eval_pairs = 0 asks for none: no error


def test_two_hosts_read_disjoint_shares_that_cover_the_split(converted):
    """records: host p reads p, p + 2, ...; dataset: host p reads block p of every global batch, so the
    two hosts' blocks, concatenated, are the batches one process reads (tests/test_multihost.py)."""
    _, _, d, _ = converted
    every = [r["id"] for r in fs.FilesSource(d, shard=(0, 1)).records("grm_train")]
    # batch 4: 2 rows per host; batch 2: one row per host, where grain's batch of 1 over an endless
    # dataset once raised OverflowError (its length did not fit an index)
    for batch, steps in ((4, 6), (2, 12)):  # past two epochs of 11
        one = fs.FilesSource(d, shard=(0, 1)).dataset("grm_train", seed=5, batch_size=batch)
        two = [fs.FilesSource(d, shard=(index, 2)).dataset("grm_train", seed=5, batch_size=batch) for index in (0, 1)]
        for step in range(steps):
            halves = [[r["id"] for r in ds[step]] for ds in two]
            assert len(halves[0]) == len(halves[1]) == batch // 2
            assert halves[0] + halves[1] == [r["id"] for r in one[step]]
    with pytest.raises(ValueError, match="multiples of the process count"):
        fs.FilesSource(d, shard=(0, 2)).dataset("grm_train", seed=5, batch_size=3)
    seen = [[r["id"] for r in fs.FilesSource(d, shard=(index, 2)).records("grm_train")] for index in (0, 1)]
    assert len(seen[0]) == 6 and len(seen[1]) == 5 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(every)


def test_a_resumed_reader_yields_the_batches_an_uninterrupted_one_yields(converted):
    import grain

    _, _, d, _ = converted

    def ids(batch):
        return [r["id"] for r in batch]

    ds = fs.FilesSource(d, shard=(0, 1)).dataset("grm_train", seed=7, batch_size=4)
    straight = [ds[step] for step in range(6)]  # 24 records: past two epochs of 11
    flat = [i for b in straight for i in ids(b)]
    assert sorted(flat[:11]) == sorted(flat[11:22]) and len(set(flat[:11])) == 11
    assert flat[:11] != flat[11:22]  # a new order every epoch
    assert ids(fs.FilesSource(d, shard=(0, 1)).dataset("grm_train", seed=8, batch_size=4)[0]) != ids(straight[0])
    # a new process resuming at step 3: ds[step] depends on (seed, step) only
    again = fs.FilesSource(d, shard=(0, 1)).dataset("grm_train", seed=7, batch_size=4)
    for step in range(3, 6):
        assert ids(again[step]) == ids(straight[step])
        for a, b in zip(again[step], straight[step]):
            np.testing.assert_array_equal(a["image"], b["image"])
    # grain's iterator state, restored into a fresh iterator that decodes in 2 threads
    it = iter(ds.to_iter_dataset())
    for _ in range(3):
        next(it)
    state = it.get_state()
    resumed = iter(again.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
    resumed.set_state(state)
    assert [ids(next(resumed)) for _ in range(3)] == [ids(b) for b in straight[3:]]


def test_reading_ahead_in_threads_gives_the_same_batches(converted):
    """`read_threads` > 0: batches decoded ahead in grain threads (files_source.Prefetched) equal
    ds[step] in order, after a jump ahead (a resume) and a jump back."""
    _, _, d, _ = converted
    plain = fs.FilesSource(d, shard=(0, 1)).dataset("grm_train", seed=7, batch_size=4)
    ahead = fs.FilesSource(d, shard=(0, 1), read_threads=2).dataset("grm_train", seed=7, batch_size=4)
    assert isinstance(ahead, fs.Prefetched)
    for step in [0, 1, 2, 3, 9, 10, 4, 5]:
        got, want = ahead[step], plain[step]
        assert [r["id"] for r in got] == [r["id"] for r in want], step
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a["image"], b["image"])
