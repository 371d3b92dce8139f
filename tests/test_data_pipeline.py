"""TFDS builder (array_record, no TensorFlow) read back through grain; sharding, shuffling, epochs;
clear errors for malformed records; the demo tokenizer cache."""

import os
import sys

import numpy as np
import pytest

from grlhfv_jax.data import pipeline as P
from grlhfv_jax.data import world as W

SIZES = (
    ("sft_policy", 10),
    ("sft_grm", 8),
    ("grm_train", 12),
    ("grm_test_id", 6),
    ("grm_test_ood", 6),
    ("policy_train", 10),
    ("policy_test", 5),
)
CFG = W.WorldConfig(seed=7, sizes=SIZES)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("world"))
    from grlhfv_jax.data import synthetic_tfds

    synthetic_tfds.build(d, CFG)
    return d


def test_tfds_round_trip_without_tensorflow(data_dir):
    assert "tensorflow" not in sys.modules  # nothing imported TF on the way
    for split, n in SIZES:
        recs = P.load_records(data_dir, split, CFG, shard_index=0, shard_count=1)
        assert len(recs) == n
        for i, r in enumerate(recs):
            want = P.decode_record(W.make_record(CFG, split, i, encode_image=False), split)
            assert set(r) == set(P.fields_of(split))
            for k, v in want.items():
                if k == "image":
                    assert r[k].dtype == np.uint8 and np.array_equal(r[k], v)
                elif isinstance(v, float):
                    assert r[k] == pytest.approx(v, abs=1e-6)
                else:
                    assert r[k] == v, (split, i, k)
    files = os.listdir(os.path.join(data_dir, "grlhfv_world"))
    assert len(files) == 2  # one config folder (+ .config); a second build reuses it
    from grlhfv_jax.data import synthetic_tfds

    b = synthetic_tfds.build(data_dir, CFG)
    assert W.WorldConfig.from_dict(__import__("json").loads(b.info.metadata["world"])) == CFG
    assert any(f.endswith("array_record-00000-of-00001") for f in os.listdir(b.data_path))
    # the default world is a registered config; custom ones get their own hashed name
    default = synthetic_tfds.builder(data_dir)
    assert default.builder_config.world == W.WorldConfig() and default.builder_config.name != b.builder_config.name


def test_grain_dataset_shuffle_epochs_and_shards(data_dir):
    ids = lambda ds: [r["id"] for b in ds for r in b]  # noqa: E731
    kw = dict(shard_index=0, shard_count=1)
    a = ids(P.dataset(data_dir, "grm_train", CFG, seed=3, num_epochs=2, batch_size=5, **kw))
    b = ids(P.dataset(data_dir, "grm_train", CFG, seed=3, num_epochs=2, batch_size=5, **kw))
    c = ids(P.dataset(data_dir, "grm_train", CFG, seed=4, num_epochs=2, batch_size=5, **kw))
    assert a == b and a != c
    assert len(a) == 24 and sorted(a[:12]) == sorted(a[12:]) and a[:12] != a[12:]  # reshuffled per epoch
    assert sorted(set(a)) == [f"grm_train-{i:07d}" for i in range(12)]
    plain = ids(P.dataset(data_dir, "grm_train", CFG, shuffle=False, batch_size=4, **kw))
    assert plain == sorted(plain)
    # per-process shards: disjoint, together everything
    shards = [
        set(r["id"] for r in P.dataset(data_dir, "grm_train", CFG, seed=0, shard_index=k, shard_count=3))
        for k in range(3)
    ]
    assert all(len(s) == 4 for s in shards) and set.union(*shards) == set(plain)
    assert not (shards[0] & shards[1] or shards[1] & shards[2])
    # default shard = jax.process_index() / process_count() (one process here)
    assert len(list(P.dataset(data_dir, "policy_test", CFG))) == 5
    # the grain DataLoader path and the file-free world source give the same records
    dl = [r["id"] for bt in P.loader(data_dir, "sft_grm", CFG, seed=1, batch_size=3, **kw) for r in bt]
    assert sorted(dl) == [f"sft_grm-{i:07d}" for i in range(8)]
    wl = P.load_records(None, "sft_grm", CFG, source="world", **kw)
    tl = P.load_records(data_dir, "sft_grm", CFG, **kw)
    assert [r["judgment"] for r in wl] == [r["judgment"] for r in tl]


def test_malformed_records_give_clear_errors():
    good = W.make_record(CFG, "grm_train", 0)
    P.decode_record(good, "grm_train")
    bad = dict(good)
    del bad["response_2"]
    with pytest.raises(ValueError, match=r"grm_train record 'grm_train-0000000': missing field 'response_2'"):
        P.decode_record(bad, "grm_train")
    with pytest.raises(ValueError, match=r"field 'image': corrupt or unreadable image"):
        P.decode_record(dict(good, image=good["image"][:30] + b"garbage" * 5), "grm_train")
    with pytest.raises(ValueError, match=r"field 'overall_response' must be 1 or 2, got 0"):
        P.decode_record(dict(good, overall_response=0), "grm_train")
    with pytest.raises(ValueError, match=r"field 'scene': scene: not valid JSON"):
        P.decode_record(dict(good, scene=b"{oops"), "grm_train")
    with pytest.raises(ValueError, match=r"field 'response_1' is empty"):
        P.decode_record(dict(good, response_1=b""), "grm_train")
    with pytest.raises(KeyError, match="unknown split"):
        P.decode_record(good, "grm_tset_id")
    with pytest.raises(ValueError, match="not a dict"):
        P.decode_record(b"raw bytes", "grm_train")
    # a corrupt image inside a grain pipeline surfaces with the same message
    import grain

    ds = grain.MapDataset.source([dict(good, image=b"\x89PNG broken")]).map(lambda r: P.decode_record(r, "grm_train"))
    with pytest.raises(ValueError, match="grm_train-0000000.*corrupt or unreadable image"):
        ds[0]


def test_tokenizer_cached_and_covers_the_world(tmp_path):
    from grlhfv_jax.processing import load_tokenizer
    from grlhfv_jax.rl.grm_reward import build_grm_prompt

    path = P.ensure_tokenizer(str(tmp_path), CFG, vocab_size=1024)
    stamp = os.path.getmtime(os.path.join(path, "tokenizer.json"))
    assert P.ensure_tokenizer(str(tmp_path), CFG, vocab_size=1024) == path  # cached, not retrained
    assert os.path.getmtime(os.path.join(path, "tokenizer.json")) == stamp
    tok = load_tokenizer(path)
    r = W.make_record(CFG, "sft_grm", 0)
    for text in (r["question"], r["response_1"], r["judgment"]):
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
        assert len(ids) <= len(text.split()) * 3  # world words are (nearly) whole tokens
    prompt = build_grm_prompt(r["question"], r["response_1"], r["response_2"])
    assert len(tok(prompt)["input_ids"]) < 1.5 * len(prompt.split())
