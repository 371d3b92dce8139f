"""The `data` stage for preference files on disk (`config.data.kind = "files"`).

Which split feeds which stage (the split names the stages read; `readers`):

| stage | split(s) | tokens checked against |
|---|---|---|
| sft (policy, data="best") | sft_policy: question + ``answer`` (the preferred response) | sft.policy.max_len |
| sft (policy, data="candidates") | sft_grm: question + each response | sft.policy.max_len |
| grm_rl | grm_train; grm_test_id / grm_test_ood when eval_pairs > 0 | grm_rl.max_len (the GRM prompt, both orders) |
| rm | grm_train; the test splits when eval_pairs > 0 | rm.max_len (question + each response) |
| dpo | grm_train | dpo.max_len (question + each response) |
| policy_rl, policy_rl_rm | policy_train: prompts | <section>.max_len |

`run` streams every configured split (`data.files_source.iter_split`), counts the bad records,
measures each record's tokens for every stage that reads it and skips, truncates (its responses)
or fails on the ones that do not fit (`config.data.too_long`), and writes the kept records, one at
a time, into a TFDS dataset of sharded array_record files (`data.files_tfds`) under
`<data dir>/files/`: what `source` hands the later stages (`FilesSource`, read through grain).
On several hosts only process 0 converts and the others wait for its finished folder; a rerun
with the same files and options reuses it (notes above `CONVERSION`).
Stages that need the synthetic world's oracle or its annotations cannot run on files
(config.sections' data rules say which).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import threading
import uuid

from grlhfv_jax import encoding, processing
from grlhfv_jax.config.sections import Reader, readers, tokenizer_dir  # which split feeds which stage; the rules
from grlhfv_jax.data import files_source as fs
from grlhfv_jax.data import preference_files as pf
from grlhfv_jax.metrics import write_json_atomic

# ----------------------------------------------------------------------------- token lengths


class Measure:
    """Token counts of the rows the stages build from a record (`encoding.Codec`'s examples, without
    building them: the image is processed once per record)."""

    def __init__(self, codec):
        self.codec, self.tok = codec, codec.tokenizer

    def image_tokens(self, image_bytes: bytes) -> int:
        out = self.codec.image_processor(images=[processing.load_image(fs.decode_image(image_bytes))])
        return int(processing.num_image_tokens(out["image_grid_thw"], self.codec.image_processor.merge_size).sum())

    def prompt(self, user_text: str, n_img: int) -> int:
        text = processing.chat_prompt(user_text, num_images=1, tokenizer=self.tok)
        return len(self.tok.encode(text, add_special_tokens=False)) - 1 + n_img

    def response(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False)) + 1  # + <|im_end|>

    def grm(self, rec: dict, n_img: int, a: str, b: str) -> int:
        return self.prompt(self.codec.grm_user_text(rec["question"], a, b), n_img)

    def lengths(self, rec: dict, reader: Reader, n_img: int) -> list[int]:
        """The token count of every row `reader` builds from `rec`."""
        if reader.what == "prompt":
            return [self.prompt(rec["question"], n_img)]
        if reader.what == "grm":
            return [
                self.grm(rec, n_img, rec["response_1"], rec["response_2"]),
                self.grm(rec, n_img, rec["response_2"], rec["response_1"]),
            ]
        q = self.prompt(rec["question"], n_img)
        texts = [rec["answer"]] if reader.what == "answer" else [rec["response_1"], rec["response_2"]]
        return [q + self.response(t) for t in texts]


def _caps(m: Measure, rec: dict, rs: list[Reader], n_img: int) -> dict[str, int]:
    """Response tokens (without <|im_end|>) each response may keep so that every reader's rows fit."""
    n = {k: m.response(rec[k]) - 1 for k in ("response_1", "response_2")}
    cap = dict(n)
    pref = "response_1" if rec["overall_response"] == 1 else "response_2"
    for r in rs:
        if r.what in ("responses", "answer"):
            room = r.max_len - m.prompt(rec["question"], n_img) - 1
            for k in ("response_1", "response_2") if r.what == "responses" else (pref,):
                cap[k] = min(cap[k], room)
        elif r.what == "grm":
            budget = r.max_len - m.grm(rec, n_img, "", "")
            if n["response_1"] + n["response_2"] > budget:
                cap["response_1"] = min(cap["response_1"], max(budget // 2, budget - n["response_2"]))
                cap["response_2"] = min(cap["response_2"], max(budget // 2, budget - n["response_1"]))
    return cap


def fit(m: Measure, rec: dict, rs: list[Reader], mode: str, split: str) -> tuple[dict | None, str]:
    """(`rec`, "") when every reader's rows fit; else per `mode`: (None, "skipped"), (a copy with its
    responses cut to fit, "truncated") or ValueError naming the record, its tokens and the key."""
    n_img = m.image_tokens(rec["image"])
    for attempt in range(4):
        over = [(r, n) for r in rs for n in m.lengths(rec, r, n_img) if n > r.max_len]
        if not over:
            return rec, ("truncated" if attempt else "")
        r, n = over[0]
        if mode == "fail":
            raise ValueError(
                f"data split '{split}': record {rec['id']}: {n} tokens > {r.key} = {r.max_len} "
                "(config.data.too_long = 'fail'; 'skip' or 'truncate' to go on)"
            )
        if mode == "skip" or any(r.what == "prompt" for r, _ in over):
            return None, "skipped"
        cap = _caps(m, rec, rs, n_img)
        if min(cap.values()) < 1:
            return None, "skipped"  # the question and image alone do not fit
        rec = dict(rec)
        for k, c in cap.items():
            ids = m.tok.encode(rec[k], add_special_tokens=False)
            if c < len(ids):  # re-encoding a cut text can merge tokens: tighten on retries
                rec[k] = m.tok.decode(ids[: max(c - attempt, 1)])
        rec["answer"] = rec["response_1"] if rec["overall_response"] == 1 else rec["response_2"]
    return None, "skipped"


# ----------------------------------------------------------------------------- one converter, many hosts
#
# On several hosts every process runs the `data` stage, on a shared filesystem. Only process 0
# converts; the others wait for its finished dataset. The shared state is the dataset folder itself:
# `files_tfds.Writer` writes into ``1.0.0.incomplete`` and renames it to ``1.0.0`` only when
# complete, with ``conversion.json`` (`files_tfds.MARKER`: the cache key, the inputs it was computed
# from, the summary figures) written last inside it. A folder is taken as finished only when its
# marker holds the key of this run's inputs, so a half-written folder (a crash mid-conversion) or
# one converted from other inputs is never read, and a rerun with the same inputs reuses it
# (processes 0 included) instead of converting again.
#
# Why wait by polling that folder rather than at a JAX barrier
# (`multihost_utils.sync_global_devices`): that barrier is a device collective, held for as long
# as the conversion takes (minutes to hours) with no timeout of its own, and the others go on only
# once a failed process 0 reaches it too or is found dead; the folder check needs no collective,
# also serves reruns and processes that start late, and is testable in one process. Process 0 reports in
# ``<data dir>/files/conversion_status.json``: "converting" (with a heartbeat every `HEARTBEAT_S`),
# "failed" (with its error) or "done". A waiting process fails at once on a failure process 0
# reports after it started waiting, and with a TimeoutError naming the folder when that file has not
# changed for `STALL_S` (process 0 killed, not running the stage, or the data folder not shared).

CONVERSION = 1  # bump when the stage writes something else for the same inputs
STATUS = "conversion_status.json"
HEARTBEAT_S = 10.0  # process 0 rewrites its status this often while converting
STALL_S = 900.0  # a waiting process gives up after its status has not changed for this long
POLL_S = 2.0  # how often a waiting process looks
# checkpoint weights next to the tokenizer files: not part of the key (they do not change a token)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt", ".gguf")


def _stats(path: str | None, top_only: bool = False) -> list | str:
    """[name, size, mtime_ns] of `path` (a file) or of every file under it (a folder; names relative
    to it); "missing" when there is nothing (the conversion then fails saying so)."""
    if path and os.path.isfile(path):
        st = os.stat(path)
        return [[os.path.basename(path), st.st_size, st.st_mtime_ns]]
    if not path or not os.path.isdir(path):
        return "missing"
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            if top_only and name.endswith(WEIGHT_SUFFIXES):
                continue
            st = os.stat(full)
            out.append([os.path.relpath(full, path), st.st_size, st.st_mtime_ns])
        if top_only:
            break
    return out


def _image_stats(spec) -> dict | str:
    """The image files a split names (`preference_files.image_files`: a JSONL's paths, a parquet or
    Arrow file's Image structs without bytes and path strings): how many, how many are missing, and
    a digest of (path, size, mtime) of each (stat only, no content hash: cheap for many files; a
    digest, not the list, so the marker stays small). {} when it names none (images inside the files)."""
    try:
        files = pf.image_files(spec.path, spec.fields, format=spec.format)
        base = os.path.dirname(os.path.abspath(spec.path))  # names relative to it: the same on every host
        digest, n, missing = hashlib.sha256(), 0, 0
        for p in files:
            name = os.path.relpath(p, base)
            try:
                st = os.stat(p)
                digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{name}\0missing\n".encode())
                missing += 1
            n += 1
    except (OSError, ValueError, KeyError):  # no such path / format / field map: the conversion says so
        return "unreadable"
    return {"count": n, "missing": missing, "stats": digest.hexdigest()[:20]} if n else {}


def _plain(x):
    return x.to_dict() if hasattr(x, "to_dict") else x


def conversion_inputs(config, shard_bytes: int | None = None) -> dict:
    """What the converted dataset depends on: each split's files (name, size, mtime) and options,
    the length checks (`readers`, `config.data.too_long`), the tokenizer files, `config.image`,
    `config.grm_template`, the shard size and the stage's version; also the size and mtime of every
    image file a split names by path (`_image_stats`: JSONL, and parquet / Arrow Image structs
    without bytes). Paths as configured (the same on every host)."""
    from grlhfv_jax.data import files_tfds

    rs, tok = readers(config), tokenizer_dir(config)
    splits = {
        split: {
            "path": spec.path,
            "format": spec.format,
            "fields": spec.fields,
            "on_bad": spec.on_bad,
            "limit": spec.limit,
            "files": _stats(spec.path),
            "image_files": _image_stats(spec),
            "readers": [dataclasses.asdict(r) for r in rs.get(split, [])],
        }
        for split, spec in sorted(config.data.files.items())
    }
    return {
        "conversion": CONVERSION,
        "tfds_version": files_tfds.VERSION,
        "splits": splits,
        "too_long": config.data.too_long,
        "tokenizer": {"dir": tok, "files": _stats(tok, top_only=True)},
        "image": _plain(config.image),
        "grm_template": config.grm_template,
        "shard_bytes": files_tfds.SHARD_BYTES if shard_bytes is None else int(shard_bytes),
    }


def conversion_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):  # absent, or being replaced
        return None


def finished(dataset_dir: str, key: str) -> dict | None:
    """The marker of a complete dataset converted from inputs with `key`, else None."""
    from grlhfv_jax.data import files_tfds

    marker = _read_json(os.path.join(dataset_dir, files_tfds.MARKER))
    return marker if isinstance(marker, dict) and marker.get("key") == key else None


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differs(a: dict | None, b: dict) -> str:
    fa, fb = _flat(a), _flat(json.loads(json.dumps(b, default=str)))
    return ", ".join(sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))[:8]) or "?"


# ----------------------------------------------------------------------------- the stage


def _convert(config, out_dir: str, marker: dict, shard_bytes: int | None) -> dict:
    """Reads, checks and writes every split (module docstring); returns `marker` with the summary
    figures and record counts added, as written into the finished folder."""
    from grlhfv_jax.data import files_tfds

    codec = encoding.Codec.from_dirs(tokenizer_dir(config), config.image, config.grm_template or None)
    m = Measure(codec)
    writer = files_tfds.Writer(out_dir, **({} if shard_bytes is None else {"shard_bytes": shard_bytes}))
    rs_by_split, summary, counts_out = readers(config), {}, {}
    for split, spec in sorted(config.data.files.items()):
        recs, bad = fs.iter_split(split, fs.SplitFiles(spec.path, spec.format, spec.fields, spec.on_bad, spec.limit))
        rs, counts = rs_by_split.get(split, []), collections.Counter()

        def kept(recs=recs, rs=rs, counts=counts, split=split):
            for rec in recs:
                if rs:
                    rec, what = fit(m, rec, rs, config.data.too_long, split)
                    if what:
                        counts[what] += 1
                if rec is not None:
                    yield rec

        n = writer.write_split(split, kept())
        summary.update(bad.summary(prefix=f"data/{split}/bad_"))
        if bad.examples:
            print(
                f"[data] {split}: skipped {sum(bad.counts.values())} bad record(s) {dict(bad.counts)}, e.g. "
                f"{bad.examples[:3]}",
                flush=True,
            )
        summary[f"data/{split}/too_long_skipped"] = counts["skipped"]
        summary[f"data/{split}/too_long_truncated"] = counts["truncated"]
        summary[f"data/{split}/records"] = counts_out[split] = n
        if counts:
            print(
                f"[data] {split}: longer than {', '.join(f'{r.key} = {r.max_len}' for r in rs)}: "
                f"{dict(counts)} (config.data.too_long = {config.data.too_long!r})",
                flush=True,
            )
        if not n and rs:
            raise ValueError(
                f"data split '{split}' ({spec.path}): no record left to read "
                f"({json.dumps({k: v for k, v in summary.items() if k.startswith(f'data/{split}/')})})"
            )
        print(f"[data] {split}: {n} records from {spec.path}", flush=True)
    marker = dict(marker, summary=summary, splits=counts_out)
    writer.finish(marker)
    return marker


def _convert_reporting(config, out_dir: str, marker: dict, shard_bytes, heartbeat_s: float) -> dict:
    """`_convert` on process 0, reporting in `STATUS` (converting with a heartbeat, failed, done)."""
    path = os.path.join(out_dir, STATUS)
    os.makedirs(out_dir, exist_ok=True)
    base = {"key": marker["key"], "attempt": uuid.uuid4().hex, "inputs": marker["inputs"]}
    write_json_atomic(path, dict(base, state="converting", beat=0))
    stop = threading.Event()

    def beat():
        n = 0
        while not stop.wait(heartbeat_s):
            n += 1
            write_json_atomic(path, dict(base, state="converting", beat=n))

    t = threading.Thread(target=beat, name="data-heartbeat", daemon=True)
    t.start()
    try:
        done = _convert(config, out_dir, marker, shard_bytes)
    except BaseException as e:
        stop.set()
        t.join()
        write_json_atomic(path, dict(base, state="failed", error=f"{type(e).__name__}: {e}"))
        raise
    stop.set()
    t.join()
    write_json_atomic(path, dict(base, state="done"))
    return done


def _wait_for_process_0(
    out_dir: str, dataset_dir: str, key: str, inputs: dict, process_index: int, *, stall_s: float, poll_s: float
) -> dict:
    """Process `process_index` > 0: the marker of process 0's finished dataset for `key`
    (module notes above); RuntimeError or TimeoutError naming the folder when none comes."""
    import time

    path = os.path.join(out_dir, STATUS)
    first = _read_json(path)  # what an earlier run left there is not news of this one
    seen, since = first, time.monotonic()
    print(f"[data] process {process_index}: waiting for process 0 to convert the splits into {dataset_dir}", flush=True)
    while True:
        done = finished(dataset_dir, key)
        if done is not None:
            return done
        st = _read_json(path)
        if st != seen:
            seen, since = st, time.monotonic()
        if isinstance(st, dict) and st != first:
            if st.get("key") != key:
                raise RuntimeError(
                    f"process 0 converts into {dataset_dir} from other inputs than process {process_index} sees "
                    f"(key {st.get('key')} vs {key}; they differ at: {_differs(st.get('inputs'), inputs)}): every "
                    "host must see the same files and config (a shared filesystem)"
                )
            if st.get("state") == "failed":
                raise RuntimeError(
                    f"process 0 failed converting the splits into {dataset_dir} (nothing finished "
                    f"there for these inputs): {st.get('error')}"
                )
        if time.monotonic() - since > stall_s:
            last = (
                "none"
                if not isinstance(st, dict)
                else f"{st.get('state')!r}, key {st.get('key')}"
                + (f": {st.get('error')}" if st.get("state") == "failed" else "")
                + (
                    " (already there when this process began waiting: an earlier run's, or process 0 stopped before "
                    "then)"
                    if st == first
                    else ""
                )
            )
            raise TimeoutError(
                f"process {process_index}: no finished dataset for these inputs (key {key}) in {dataset_dir} and no "
                f"sign of process 0 converting in {path} for {stall_s:.0f} s (its last status: {last}): is process 0 "
                "running the 'data' stage, did it fail (see its log), is the data folder on a filesystem every host "
                "sees? Converting once on one host (--config.stages=\"['data']\") also works"
            )
        time.sleep(poll_s)


def run(
    config,
    workdir: str,
    data_dir: str,
    *,
    shard_bytes: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    stall_s: float = STALL_S,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> dict:
    """Converts every configured split (module docstring) into ``<data_dir>/files`` unless a finished
    conversion of the same inputs is there (`conversion_inputs`); only process 0 converts, the
    others wait for it (notes above `CONVERSION`). Writes `workdir/data_paths.json`; returns the
    summary figures of the conversion: per split ``data/<split>/records``, bad-record counts,
    ``too_long_*`` counts. `shard_bytes`: array_record shard size (files_tfds.SHARD_BYTES);
    `process_index` / `process_count`: default jax's."""
    from grlhfv_jax.data import files_tfds

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    out_dir = os.path.join(data_dir, "files")
    dataset_dir = os.path.join(out_dir, files_tfds.DATASET_NAME, files_tfds.VERSION)
    inputs = conversion_inputs(config, shard_bytes)
    key = conversion_key(inputs)
    done = finished(dataset_dir, key)
    if done is not None:
        print(
            f"[data] {dataset_dir} holds these splits converted from the same files and options "
            f"(key {key}): not converting again ({done['splits']} records)",
            flush=True,
        )
    elif process_index == 0:
        done = _convert_reporting(config, out_dir, {"key": key, "inputs": inputs}, shard_bytes, heartbeat_s)
        print(f"[data] converted to {dataset_dir} (key {key})", flush=True)
    else:
        if not 0 < process_index < process_count:
            raise ValueError(f"process_index {process_index} is not one of the {process_count} processes")
        done = _wait_for_process_0(out_dir, dataset_dir, key, inputs, process_index, stall_s=stall_s, poll_s=poll_s)
        print(f"[data] process {process_index}: process 0 converted the splits into {dataset_dir}", flush=True)
    write_json_atomic(
        os.path.join(workdir, "data_paths.json"),
        {
            "kind": "files",
            "data_dir": data_dir,
            "tokenizer_dir": tokenizer_dir(config),
            "dataset_dir": dataset_dir,
            "splits": done["splits"],
        },
    )
    return dict(done["summary"])


def source(paths: dict, read_threads: int = 0, image_workers: int = 0, image_processor=None) -> fs.FilesSource:
    """The source over the splits `run` converted (`paths`: its data_paths.json); `read_threads`
    decode the next batches while a step runs (`files_source.Prefetched`); with `image_workers` > 0
    the read threads also run `image_processor` (config.image's) on each image."""
    if "dataset_dir" not in paths:
        raise ValueError(
            "data_paths.json names no converted dataset (written by an older version of the "
            "'data' stage): rerun the 'data' stage"
        )
    return fs.FilesSource(
        paths["dataset_dir"],
        read_threads=int(read_threads),
        image_workers=int(image_workers),
        image_processor=image_processor if int(image_workers) > 0 else None,
    )
