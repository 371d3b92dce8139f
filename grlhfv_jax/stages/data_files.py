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
Stages that need the synthetic world's oracle or its annotations cannot run on files
(`check_config` says which).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

from grlhfv_jax import processing
from grlhfv_jax.config import ConfigError
from grlhfv_jax.data import files_source as fs
from grlhfv_jax.data import preference_files as pf

# stages that cannot run on files, and why
WORLD_ONLY_STAGES = {
    "vision": "it pretrains the vision tower on the synthetic world's image labels (colour, count, shape, position)",
    "evaluate": "it scores answers with the synthetic world's oracle",
    "nscale": "it scores answers with the synthetic world's oracle",
}
TOO_LONG = ("skip", "truncate", "fail")


@dataclasses.dataclass(frozen=True)
class Reader:
    """A stage reading a split: `what` it builds from each record ("grm": the GRM prompt of the pair,
    "responses": question + each response, "answer": question + the preferred response, "prompt":
    the question alone) and the `key` of its token limit, `max_len`."""
    what: str
    key: str
    max_len: int


def readers(config) -> dict[str, list[Reader]]:
    """split -> the stages of this run that read it (module docstring). `config` has its defaults."""
    out = collections.defaultdict(list)

    def add(split, what, key):
        sec, leaf = key.rsplit(".", 1)
        node = config
        for part in sec.split("."):
            node = node[part]
        out[split].append(Reader(what, f"config.{key}", int(node[leaf])))

    for stage in config.stages:
        if stage == "sft" and "policy" in config.sft:
            if config.sft.policy.data == "best":
                add("sft_policy", "answer", "sft.policy.max_len")
            elif config.sft.policy.data == "candidates":
                add("sft_grm", "responses", "sft.policy.max_len")
        elif stage == "grm_rl":
            add("grm_train", "grm", "grm_rl.max_len")
            if config.grm_rl.eval_pairs:
                add("grm_test_id", "grm", "grm_rl.max_len")
                add("grm_test_ood", "grm", "grm_rl.max_len")
        elif stage == "rm":
            add("grm_train", "responses", "rm.max_len")
            if config.rm.eval_pairs:
                add("grm_test_id", "responses", "rm.max_len")
                add("grm_test_ood", "responses", "rm.max_len")
        elif stage == "dpo":
            add("grm_train", "responses", "dpo.max_len")
        elif stage in ("policy_rl", "policy_rl_rm"):
            add("policy_train", "prompt", f"{stage}.max_len")
    return dict(out)


def check_config(config) -> None:
    """ConfigError for a files run that cannot work: an unknown choice, a stage that needs the world,
    a split a stage reads that is not configured, no tokenizer. `config` has its defaults."""
    d = config.data
    if d.too_long not in TOO_LONG:
        raise ConfigError(f"config.data.too_long = {d.too_long!r}: expected one of {TOO_LONG}")
    if d.read_threads < 0:
        raise ConfigError(f"config.data.read_threads = {d.read_threads}: expected 0 (read in the step) or more")
    for split, spec in d.get("files", {}).items():
        where = f"config.data.files.{split}"
        if "path" not in spec or not spec.path:
            raise ConfigError(f"{where}.path is missing (the split's file or folder)")
        if spec.format not in pf.FORMATS:
            raise ConfigError(f"{where}.format = {spec.format!r}: expected one of {pf.FORMATS}")
        if spec.fields not in pf.FIELD_MAPS:
            raise ConfigError(f"{where}.fields = {spec.fields!r}: expected one of {sorted(pf.FIELD_MAPS)}")
        if spec.on_bad not in ("skip", "fail"):
            raise ConfigError(f"{where}.on_bad = {spec.on_bad!r}: expected 'skip' or 'fail'")
    for stage in config.stages:
        if stage in WORLD_ONLY_STAGES:
            raise ConfigError(f"config.stages: stage '{stage}' cannot run with config.data.kind = 'files': "
                              f"{WORLD_ONLY_STAGES[stage]}; leave it out")
    if "sft" in config.stages:
        if "grm" in config.sft:
            raise ConfigError("config.sft.grm: the GRM warm start trains on the synthetic world's judgments, which "
                              "preference files lack; with config.data.kind = 'files' leave config.sft.grm out (the "
                              "GRM starts from config.model.grm.path)")
        if "policy" in config.sft and config.sft.policy.data == "styled":
            raise ConfigError("config.sft.policy.data = 'styled' restyles answers with the synthetic world's styles; "
                              "with config.data.kind = 'files' use 'best' (the preferred responses) or 'candidates'")
    for split, rs in readers(config).items():
        if split not in d.get("files", {}):
            names = ", ".join(sorted({r.key.split(".")[1] for r in rs}))
            raise ConfigError(f"config.data.files.{split} is missing: stage(s) {names} read split '{split}' "
                              f"(set config.data.files.{split}.path)")
    if not tokenizer_dir(config):
        raise ConfigError("config.data.tokenizer_dir is not set and no config.model.* entry has a path: a files "
                          "run needs a tokenizer folder")


def tokenizer_dir(config) -> str | None:
    """config.data.tokenizer_dir, else the checkpoint folder of the first of config.model.policy /
    grm / rm that has a path (a Qwen checkpoint holds its tokenizer)."""
    paths = [config.model[r].path for r in ("policy", "grm", "rm") if r in config.model and config.model[r].path]
    return config.data.tokenizer_dir or (paths[0] if paths else None)


# ----------------------------------------------------------------------------- token lengths


class Measure:
    """Token counts of the rows the stages build from a record (`common.Codec`'s examples, without
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
        return len(self.tok.encode(text, add_special_tokens=False)) + 1   # + <|im_end|>

    def grm(self, rec: dict, n_img: int, a: str, b: str) -> int:
        return self.prompt(self.codec.grm_user_text(rec["question"], a, b), n_img)

    def lengths(self, rec: dict, reader: Reader, n_img: int) -> list[int]:
        """The token count of every row `reader` builds from `rec`."""
        if reader.what == "prompt":
            return [self.prompt(rec["question"], n_img)]
        if reader.what == "grm":
            return [self.grm(rec, n_img, rec["response_1"], rec["response_2"]),
                    self.grm(rec, n_img, rec["response_2"], rec["response_1"])]
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
            for k in (("response_1", "response_2") if r.what == "responses" else (pref,)):
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
            raise ValueError(f"data split '{split}': record {rec['id']}: {n} tokens > {r.key} = {r.max_len} "
                             "(config.data.too_long = 'fail'; 'skip' or 'truncate' to go on)")
        if mode == "skip" or any(r.what == "prompt" for r, _ in over):
            return None, "skipped"
        cap = _caps(m, rec, rs, n_img)
        if min(cap.values()) < 1:
            return None, "skipped"   # the question and image alone do not fit
        rec = dict(rec)
        for k, c in cap.items():
            ids = m.tok.encode(rec[k], add_special_tokens=False)
            if c < len(ids):   # re-encoding a cut text can merge tokens: tighten on retries
                rec[k] = m.tok.decode(ids[:max(c - attempt, 1)])
        rec["answer"] = rec["response_1"] if rec["overall_response"] == 1 else rec["response_2"]
    return None, "skipped"


# ----------------------------------------------------------------------------- the stage


def run(config, workdir: str, data_dir: str, *, shard_bytes: int | None = None) -> dict:
    """Reads, checks and converts every configured split (module docstring), one record at a time;
    writes `workdir/data_paths.json`; returns the summary figures: per split ``data/<split>/records``,
    bad-record counts, ``too_long_*`` counts. `shard_bytes`: array_record shard size (files_tfds.SHARD_BYTES)."""
    from grlhfv_jax.data import files_tfds
    from grlhfv_jax.stages import common
    tok_dir = tokenizer_dir(config)
    codec = common.Codec.from_dirs(tok_dir, config.image, config.grm_template or None)
    m = Measure(codec)
    writer = files_tfds.Writer(os.path.join(data_dir, "files"),
                               **({} if shard_bytes is None else {"shard_bytes": shard_bytes}))
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
            print(f"[data] {split}: skipped {sum(bad.counts.values())} bad record(s) {dict(bad.counts)}, e.g. "
                  f"{bad.examples[:3]}", flush=True)
        summary[f"data/{split}/too_long_skipped"] = counts["skipped"]
        summary[f"data/{split}/too_long_truncated"] = counts["truncated"]
        summary[f"data/{split}/records"] = counts_out[split] = n
        if counts:
            print(f"[data] {split}: longer than {', '.join(f'{r.key} = {r.max_len}' for r in rs)}: "
                  f"{dict(counts)} (config.data.too_long = {config.data.too_long!r})", flush=True)
        if not n and rs:
            raise ValueError(f"data split '{split}' ({spec.path}): no record left to read "
                             f"({json.dumps({k: v for k, v in summary.items() if k.startswith(f'data/{split}/')})})")
        print(f"[data] {split}: {n} records from {spec.path}", flush=True)
    dataset_dir = writer.finish()
    print(f"[data] converted to {dataset_dir}", flush=True)
    with open(os.path.join(workdir, "data_paths.json"), "w") as f:
        json.dump({"kind": "files", "data_dir": data_dir, "tokenizer_dir": tok_dir, "dataset_dir": dataset_dir,
                   "splits": counts_out}, f, indent=2)
    return summary


def source(paths: dict, read_threads: int = 0) -> fs.FilesSource:
    """The source over the splits `run` converted (`paths`: its data_paths.json); `read_threads`
    decode the next batches while a step runs (`files_source.Prefetched`)."""
    if "dataset_dir" not in paths:
        raise ValueError("data_paths.json names no converted dataset (written by an older version of the "
                         "'data' stage): rerun the 'data' stage")
    return fs.FilesSource(paths["dataset_dir"], read_threads=int(read_threads))
