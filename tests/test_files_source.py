"""Preference files on disk as the run's data source (config.data.kind = "files"): the same rows
written as parquet and as JSONL give identical records and batches once converted to array_record; a files run that cannot work
fails before anything runs, naming the key; over-long records are skipped / truncated / refused and
counted; a tiny run of data -> sft -> grm_rl -> policy_rl on fixture files completes."""

import io
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grlhfv_jax import config as config_schema
from grlhfv_jax import encoding, roles
from grlhfv_jax.config import ConfigError
from grlhfv_jax.data import files_source as fs

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

WORDS = "red blue green circle square the is are a an big small left right one two three".split()


def _png(seed, size=28):
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _text(rng, n):
    return " ".join(rng.choice(WORDS, n))


def _rows(n=6, long_response_at=None):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        r2 = _text(rng, 150) if k == long_response_at else _text(rng, 3)
        rows.append(
            dict(
                question=f"What is in image {k}?",
                image=_png(k),
                response_1=_text(rng, 3),
                response_2=r2,
                overall_response=1 + k % 2,
            )
        )
    return rows


def _write(root, name, rows):
    """The rows as hub parquet (Image structs) and as JSONL + PNG files; returns both paths."""
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols = {k: [r[k] for r in rows] for k in rows[0] if k != "image"}
    cols["image"] = pa.array([{"bytes": r["image"], "path": None} for r in rows], img)
    os.makedirs(root / "parquet", exist_ok=True)
    pq.write_table(pa.table(cols), root / "parquet" / f"{name}.parquet")
    os.makedirs(root / "jsonl" / name, exist_ok=True)
    with open(root / "jsonl" / f"{name}.jsonl", "w") as f:
        for k, r in enumerate(rows):
            (root / "jsonl" / name / f"{k}.png").write_bytes(r["image"])
            f.write(json.dumps(dict({c: v for c, v in r.items() if c != "image"}, image=f"{name}/{k}.png")) + "\n")
    return str(root / "parquet" / f"{name}.parquet"), str(root / "jsonl" / f"{name}.jsonl")


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if k == "image":
                assert x[k].dtype == np.uint8 and x[k].ndim == 3
                np.testing.assert_array_equal(x[k], y[k])
            else:
                assert x[k] == y[k], k


def test_parquet_and_jsonl_give_identical_records_and_batches(tmp_path):
    rows = _rows(5)
    pq_path, js_path = _write(tmp_path, "pairs", rows)
    srcs = [
        fs.FilesSource(
            fs.write_splits(
                str(tmp_path / f"tfds{k}"), {"grm_train": fs.SplitFiles(p), "policy_train": fs.SplitFiles(p)}
            )[0],
            shard=(0, 1),
        )
        for k, p in enumerate((pq_path, js_path))
    ]
    recs = [s.records("grm_train") for s in srcs]
    _same(*recs)
    assert [r["overall_response"] for r in recs[0]] == [r["overall_response"] for r in rows]
    assert [r["answer"] for r in recs[0]] == [r[f"response_{r['overall_response']}"] for r in rows]
    np.testing.assert_array_equal(recs[0][2]["image"], np.asarray(Image.open(io.BytesIO(rows[2]["image"]))))
    ds = [s.dataset("grm_train", seed=3, batch_size=4) for s in srcs]
    for step in range(4):  # past one epoch (5 records)
        _same(ds[0][step], ds[1][step])
    # deterministic by seed, a new order per epoch, every record once per epoch
    again = srcs[0].dataset("grm_train", seed=3, batch_size=4)
    assert [r["id"] for r in again[2]] == [r["id"] for r in ds[0][2]]
    first = [r["id"] for step in range(5) for r in srcs[0].dataset("grm_train", seed=3, batch_size=1)[step]]
    assert sorted(first) == sorted(r["id"] for r in recs[0])
    other = [r["id"] for step in range(5) for r in srcs[0].dataset("grm_train", seed=4, batch_size=1)[step]]
    assert other != first
    # prompts: question and image only; process shares split the records
    prompts = srcs[1].records("policy_train")
    assert set(prompts[0]) == {"id", "question", "image", "meta"}
    assert srcs[0].hooks is None
    assert srcs[0].encode_image(recs[0][0]["image"])[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError, match=r"config\.data\.files\.grm_test_id\.path"):
        srcs[0].records("grm_test_id")


# The demo's architecture at its smallest: these tests run the stages on files data, not the demo's
# shapes (the short demo, CI's, runs those)
SMALL_MODEL = demo.tiny_qwen2_vl(hidden=32, layers=1, heads=2, kv_heads=1, vision_depth=1, vision_dim=32)


def _files_config(paths: dict, tokenizer_dir: str, grm_path: str | None = None):
    c = demo.get_config("smoke")
    c.stages = ("data", "sft", "grm_rl", "policy_rl")
    for role in ("policy", "grm", "rm"):
        c.model[role].hf_config = SMALL_MODEL
    c.data = dict(
        kind="files",
        tokenizer_dir=tokenizer_dir,
        too_long="skip",
        files={split: dict(path=p) for split, p in paths.items()},
    )
    del c["sft"]["grm"]
    c.sft.policy.update(data="best", pretrained_vision=False, steps=1, batch_size=2, max_len=96)
    c.model.grm.path = grm_path
    c.grm_rl.update(
        steps=1,
        pairs_per_step=2,
        group_size=2,
        mini_batches=1,
        eval_pairs=2,
        eval_rows=4,
        max_len=160,
        max_new_tokens=4,
    )
    c.policy_rl.update(steps=1, prompts_per_step=2, n=2, max_len=96, max_new_tokens=4, judge_max_new_tokens=4)
    return c


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(stages=("data", "sft", "evaluate")), r"stage 'evaluate' cannot run .* oracle"),
        (lambda c: c.update(stages=("data", "vision")), r"stage 'vision' cannot run"),
        (
            lambda c: c.data.files.__delitem__("grm_test_id"),
            r"config\.data\.files\.grm_test_id is missing: stage\(s\) grm_rl",
        ),
        (
            lambda c: c.data.files.update(grm_trian=dict(path="x")),
            r"config\.data\.files\.grm_trian: unknown key; did you mean 'grm_train'",
        ),
        (lambda c: c.data.files.grm_train.update(fields="align_everything"), r"config\.data\.files\.grm_train\.fields"),
        (lambda c: c.data.files.grm_train.update(on_bad="ignore"), r"config\.data\.files\.grm_train\.on_bad"),
        (lambda c: c.data.update(too_long="wrap"), r"config\.data\.too_long = 'wrap'"),
        (lambda c: c.data.update(read_threads=-1), r"config\.data\.read_threads = -1"),
        (lambda c: c.data.update(image_workers=-1), r"config\.data\.image_workers = -1"),
        (lambda c: c.data.update(kind="hub"), r"config\.data\.kind = 'hub'"),
        (
            lambda c: c.sft.update(grm=dict(steps=1, batch_size=1, max_len=64, lr=1e-3)),
            r"config\.sft\.grm: .*judgments",
        ),
        (lambda c: c.sft.policy.update(data="styled"), r"config\.sft\.policy\.data = 'styled'"),
        (lambda c: c.data.update(tokenizer_dir=None), r"config\.data\.tokenizer_dir is not set"),
    ],
)
def test_a_files_run_that_cannot_work_fails_naming_the_key(edit, match):
    splits = ("sft_policy", "grm_train", "grm_test_id", "grm_test_ood", "policy_train")
    c = _files_config({s: "/nowhere" for s in splits}, "/tok")
    config_schema.validate(c)  # as written: valid (nothing is read yet)
    edit(c)
    with pytest.raises(ConfigError, match=match):
        config_schema.validate(c)


@pytest.fixture(scope="module")
def files_run(tmp_path_factory):
    """Fixture files, a tokenizer trained on their words, a tiny GRM checkpoint; the config."""
    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.data.tokenizer import train_tokenizer
    from grlhfv_jax.rl.grm_reward import build_grm_prompt

    root = tmp_path_factory.mktemp("files_run")
    rows = _rows(6, long_response_at=5)  # record 5 prefers its long response 2
    pairs, pairs_jsonl = _write(root, "pairs", rows)
    tok_dir = str(root / "tokenizer")
    texts = [r[k] for r in rows for k in ("question", "response_1", "response_2")]
    texts += [build_grm_prompt("q", "a", "b", template=demo.DEMO_GRM_TEMPLATE)] * 20
    train_tokenizer(texts * 5, tok_dir, vocab_size=400)
    paths = dict(
        sft_policy=pairs, grm_train=pairs_jsonl, grm_test_id=pairs, grm_test_ood=pairs_jsonl, policy_train=pairs
    )
    config = _files_config(paths, tok_dir, grm_path=str(root / "grm"))
    codec = encoding.Codec.from_dirs(tok_dir, config.image, config.grm_template)
    grm = models.from_config(roles.model_config(config.model.grm, codec), rngs=nnx.Rngs(1))
    models.save_pretrained(grm, str(root / "grm"))
    return config, root


def test_over_long_records_are_skipped_truncated_or_refused_and_counted(files_run):
    from grlhfv_jax.data import files_convert as data_files

    config, root = files_run
    full = config_schema.validate(config)
    rs = data_files.readers(full)
    assert [r.key for r in rs["grm_train"]] == ["config.grm_rl.max_len"]
    assert [r.key for r in rs["policy_train"]] == ["config.policy_rl.max_len"]
    codec = encoding.Codec.from_dirs(full.data.tokenizer_dir, full.image, full.grm_template)
    m = data_files.Measure(codec)
    recs, _ = fs.read_split("grm_train", fs.SplitFiles(full.data.files.grm_train.path))
    long, short = recs[5], recs[0]
    n_img = m.image_tokens(long["image"])
    # the measure is the length of the row the stage builds
    ex = codec.grm_example(long["question"], fs.decode_image(long["image"]), long["response_1"], long["response_2"])
    assert m.lengths(long, rs["grm_train"][0], n_img)[0] == len(ex["input_ids"]) > full.grm_rl.max_len
    assert data_files.fit(m, short, rs["grm_train"], "skip", "grm_train") == (short, "")
    assert data_files.fit(m, long, rs["grm_train"], "skip", "grm_train") == (None, "skipped")
    cut, what = data_files.fit(m, long, rs["grm_train"], "truncate", "grm_train")
    assert what == "truncated" and len(cut["response_2"]) < len(long["response_2"])
    assert max(m.lengths(cut, rs["grm_train"][0], n_img)) <= full.grm_rl.max_len
    assert cut["response_1"] == long["response_1"] and cut["answer"] == cut[f"response_{cut['overall_response']}"]
    with pytest.raises(ValueError, match=r"record pairs-5: \d+ tokens > config\.grm_rl\.max_len = 160"):
        data_files.fit(m, long, rs["grm_train"], "fail", "grm_train")


@pytest.mark.parametrize("image_workers", [0, 2])
def test_tiny_run_on_files_data_sft_grm_rl_policy_rl(files_run, tmp_path, image_workers):
    """Also with the image processor in the read threads (config.data.image_workers)."""
    from grlhfv_jax import main

    config, root = files_run
    config = config.copy_and_resolve_references()
    config.data.image_workers = image_workers
    summary = main.run(config, str(tmp_path / "run"))
    # the over-long pair is skipped in every split a length-checking stage reads, and counted
    for split in ("grm_train", "grm_test_id", "grm_test_ood"):
        assert summary[f"data/{split}/too_long_skipped"] == 1, split
        assert summary[f"data/{split}/records"] == 5
    assert summary["data/sft_policy/too_long_skipped"] == 1  # its preferred answer is the long one
    assert summary["data/policy_train/records"] == 6 and summary["data/policy_train/bad_total"] == 0
    for stage in ("sft", "grm_rl", "policy_rl"):
        assert f"time/{stage}_s" in summary
    assert np.isfinite(summary["sft/policy_loss"])
    assert "grm/accuracy_id" in summary and "grm/sft_accuracy_id" in summary
    for out in ("sft/policy", "grm_rl/grm", "policy_rl/policy"):
        assert os.path.isfile(tmp_path / "run" / out / "config.json"), out


def test_the_data_stage_counts_bad_and_truncated_records_into_the_summary(files_run, tmp_path, capsys):
    from grlhfv_jax.data import files_convert as data_files

    config, root = files_run
    rows = _rows(6, long_response_at=5)
    rows[2]["overall_response"] = 0  # not a label value: skipped as bad_label
    pq_path, _ = _write(tmp_path, "pairs", rows)
    c = config.copy_and_resolve_references()
    for split in c.data.files:
        c.data.files[split].path = pq_path
    c.data.too_long = "truncate"
    full = config_schema.validate(c)
    s = data_files.run(full, str(tmp_path), str(tmp_path / "data"))
    assert s["data/grm_train/bad_bad_label"] == 1 and s["data/grm_train/bad_total"] == 1
    assert s["data/grm_train/rows_read"] == 6
    assert s["data/grm_train/too_long_truncated"] == 1 and s["data/grm_train/too_long_skipped"] == 0
    assert s["data/grm_train/records"] == 5
    assert s["data/policy_train/bad_total"] == 0 and s["data/policy_train/records"] == 6  # prompts: no label read
    assert "grm_train: skipped 1 bad record(s) {'bad_label': 1}" in capsys.readouterr().out
    src = data_files.source(json.load(open(tmp_path / "data_paths.json")))
    recs = src.records("grm_train")
    assert len(recs) == 5 and recs[-1]["answer"] == recs[-1]["response_2"] != rows[5]["response_2"]
    assert rows[5]["response_2"].startswith(recs[-1]["response_2"].strip())
