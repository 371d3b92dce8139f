"""What every reward-model benchmark shares: reading rows from its published files, the items the
evaluator judges, the problems log, and the pairwise figures.

A benchmark module (one per benchmark, lmms-eval style: data + prompt + scoring side by side) has
    NAME, TASK ("pair" or "score"), FORMAT (its published file format), FIELDS (our field -> its column),
    read(path, fields, *, limit, image_root, problems) -> [Item]
    figures(items, verdicts) -> {metric: value}      one presentation order's figures ("pair"), or
    figures(items, scores) -> {metric: value}        ("score": one number per item or None)
    LEADERBOARD: [(metric, column title)]            the benchmark's own leaderboard columns
Items hold the image as encoded bytes. A verdict is 1 (response 1 better), 2, 0 (tie) or None
(the judgment did not parse); the evaluator judges both orders and maps the swapped order's
verdicts back to the dataset's order before calling `figures` once per order.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from grlhfv_jax.data import preference_files as pf

REASONS = (
    "malformed",
    "missing_field",
    "missing_image",
    "undecodable_image",
    "bad_label",
    "empty_text",
    "unsupported",
    "too_long",
)


@dataclasses.dataclass
class Item:
    """One judged unit. pair: `responses` (two texts) and `labels` (label name -> 1, 2 or 0 = tie;
    BeaverTails-V has two labels, the others one named "preference"). score: one response and
    `human` (the human score). `category`: the benchmark's breakdown; `group`: items that must all
    be right together (MM-RLHF-RewardBench's Acc+)."""

    id: str
    question: str
    image: bytes
    responses: tuple
    labels: dict = dataclasses.field(default_factory=dict)
    category: str = ""
    group: str = ""
    human: float | None = None


class Problems:
    """Records that were left out, counted by reason and named (benchmark, item id, why), and judge
    answers that did not parse. Logged as they happen through `log` (print by default)."""

    def __init__(self, benchmark: str = "", log=print, max_named: int = 200):
        self.benchmark, self.log, self.max_named = benchmark, log, max_named
        self.counts: collections.Counter = collections.Counter()
        self.named: list = []
        self.read = 0

    def add(self, item_id: str, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if len(self.named) < self.max_named:
            self.named.append((item_id, reason, detail))
        self.log(f"[{self.benchmark}] {item_id}: {reason}: {detail}")

    def summary(self) -> dict:
        out = {f"bad_{r}": int(self.counts.get(r, 0)) for r in REASONS}
        out["bad_total"] = int(sum(self.counts.values()))
        out["rows_read"] = int(self.read)
        return out


# ----------------------------------------------------------------------------- reading


def files(path: str, fmt: str) -> list[str]:
    """The files of `path` (a file, or a folder: its *.parquet / *.jsonl / *.json at any depth)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"benchmark data not found: {path!r}")
    ext = {"parquet": ("parquet",), "jsonl": ("jsonl",), "json": ("json",)}.get(fmt, ("parquet", "jsonl", "json"))
    found = sorted(f for e in ext for f in glob.glob(os.path.join(path, "**", f"*.{e}"), recursive=True))
    if not found:
        raise FileNotFoundError(f"{path!r}: no {'/'.join(ext)} files")
    return found


def rows(path: str, fmt: str = "auto") -> Iterator[tuple[str, str, Any]]:
    """(file, row id "<file stem>-<row>", a dict or an Exception for a malformed row) of every row.
    Formats: parquet (every column, nested ones as Python lists / dicts), jsonl (one object a line),
    json (one array of objects, or {"data": [...]}; a .json file that is really JSONL is read as
    such). `fmt="auto"` goes by each file's extension."""
    for file in files(path, fmt):
        kind = fmt if fmt != "auto" else os.path.splitext(file)[1].lower().lstrip(".")
        stem = os.path.splitext(os.path.basename(file))[0]
        if kind == "parquet":
            import pyarrow.parquet as pq

            i = 0
            for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    yield file, f"{stem}-{i}", row
                    i += 1
            continue
        if kind not in ("jsonl", "json"):
            raise ValueError(f"{file}: unknown format {kind!r} (parquet, jsonl or json)")
        with open(file, encoding="utf-8") as f:
            text = f.read()
        data = None
        if kind == "json":
            try:
                data = json.loads(text)
            except ValueError:
                data = None  # JSON lines under a .json name
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
        if isinstance(data, list):
            for i, row in enumerate(data):
                yield (
                    file,
                    f"{stem}-{i}",
                    row if isinstance(row, dict) else ValueError(f"a JSON {type(row).__name__}, not an object"),
                )
            continue
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                row = pf.json_object(line)
            except ValueError as e:
                row = ValueError(f"malformed JSON line: {e}")
            yield file, f"{stem}-{i}", row


def image(value, file: str, image_root: str | None) -> tuple[bytes | None, str]:
    """(encoded image bytes, '') or (None, why): `value` an HF Image struct {bytes, path}, raw
    bytes, or a path: relative to `image_root` when set, else to the folder of the file holding the
    row, else to its images/ subfolder (the first that holds the file). The bytes are decoded once
    to catch a corrupt file."""
    here = os.path.dirname(os.path.abspath(file))
    bases = [image_root] if image_root else [here, os.path.join(here, "images")]
    for base in bases:
        data, why = pf._image_bytes(value, base)
        if data is not None:
            break
    if data is None:
        return None, why
    why = pf._decodes(data)
    return (None, why) if why else (data, "")


def field(row: dict, fields: dict, name: str):
    """The value of our field `name` in `row` (`fields` maps our names to the dataset's columns;
    a dotted column "a.b" reads row["a"]["b"])."""
    value: Any = row
    for part in str(fields[name]).split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def text(value) -> str:
    return "" if value is None else str(value)


def built_rows(rows, items: list, limit: int | None, problems: Problems, build):
    """(file, row_id, row, built) for each well-formed row of `rows` ((file, row_id, row or an
    Exception) triples) while `items`, the caller's list as it grows, holds fewer than `limit`:
    `built` is `build(row, file, row_id)`, or ("malformed", detail) where it raised (a row of an
    unexpected shape: named, never fatal). Every row read is counted in `problems`, a malformed one
    named there."""
    for file, row_id, row in rows:
        if limit is not None and len(items) >= limit:
            break
        problems.read += 1
        if isinstance(row, Exception):
            problems.add(row_id, "malformed", str(row))
            continue
        try:
            built = build(row, file, row_id)
        except Exception as e:  # a row of an unexpected shape: named, never fatal
            built = ("malformed", f"{type(e).__name__}: {e}")
        yield file, row_id, row, built


def read_items(
    path: str, fields: dict, *, fmt: str, limit: int | None, image_root: str | None, problems: Problems, build
) -> list[Item]:
    """Items from `path`: `build(row, file, row_id)` returns an Item or (reason, detail) for a bad
    row (the image is read here: field "image"); malformed rows, missing images and whatever
    `build` rejects are counted and named in `problems`, never raised."""
    items = []
    for _, row_id, row, built in built_rows(rows(path, fmt), items, limit, problems, build):
        if not isinstance(built, Item):  # named by the dataset's id where it has one, and the row
            did = text(field(row, fields, "id")) if "id" in fields else ""
            problems.add(f"{did} [{row_id}]" if did else row_id, *built)
            continue
        if not built.question.strip() or any(not r.strip() for r in built.responses):
            problems.add(built.id, "empty_text", "an empty question or response")
            continue
        items.append(built)
    return items


def with_image(row: dict, fields: dict, file: str, image_root: str | None):
    """(image bytes, None) or (None, (reason, detail)) for the row's image field."""
    value = field(row, fields, "image")
    if value is None or value == "" or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
        return None, ("missing_image", f"no value in {fields['image']!r}")
    data, why = image(value, file, image_root)
    if data is None:
        reason = "missing_image" if why.startswith(("no file", "no image", "empty")) else "undecodable_image"
        return None, (reason, why)
    return data, None


def labelled_pair(
    row: dict,
    fields: dict,
    file: str,
    row_id: str,
    image_root: str | None,
    labels: dict,
    responses=("response_1", "response_2"),
    answer=lambda value: value,
):
    """A pair Item from fields id, question, image, label (mapped by `labels`) and the two
    `responses` (each value read through `answer`), labels {"preference": ...}; or (reason, detail)
    for a row with a null response, a bad label or no image."""
    a, b = responses
    rid = text(field(row, fields, "id")) or row_id
    r1, r2 = answer(field(row, fields, a)), answer(field(row, fields, b))
    if r1 is None or r2 is None:
        return "missing_field", f"{fields[a]!r} or {fields[b]!r} is null"
    label = label_from(field(row, fields, "label"), labels, fields["label"])
    if isinstance(label, tuple):
        return label
    img, bad = with_image(row, fields, file, image_root)
    if bad:
        return bad
    return Item(rid, text(field(row, fields, "question")), img, (str(r1), str(r2)), {"preference": label})


# ----------------------------------------------------------------------------- figures


def correct(verdict, label: int) -> float:
    """1.0 when `verdict` (1, 2, 0 = tie, None = unparsed) matches `label` (1, 2 or 0 = tie)."""
    return float(verdict is not None and verdict == label)


def mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def accuracy(items: Sequence[Item], verdicts: Sequence, label: str = "preference", *, ties: bool = False) -> float:
    """Share of items whose verdict matches their `label`; items labelled a tie are left out
    unless `ties` (then only a tie verdict is right for them). Ties and unparsed verdicts are wrong
    for a decided label."""
    pairs = [(it, v) for it, v in zip(items, verdicts) if label in it.labels and (ties or it.labels[label] != 0)]
    return mean(correct(v, it.labels[label]) for it, v in pairs)


def by_category(
    items: Sequence[Item], verdicts: Sequence, prefix: str = "accuracy_", label: str = "preference", ties: bool = False
) -> dict:
    """accuracy per item category: {prefix + category: value} (categories sorted; '/' -> '_')."""
    cats: dict = collections.defaultdict(list)
    for it, v in zip(items, verdicts):
        if it.category:
            cats[it.category].append((it, v))
    return {
        prefix + key(c): accuracy([i for i, _ in p], [v for _, v in p], label, ties=ties)
        for c, p in sorted(cats.items())
    }


def key(name: str) -> str:
    """A category name as a metric-key part."""
    return str(name).strip().lower().replace("/", "_").replace(" ", "_").replace("-", "_")


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r of paired values; nan with fewer than 2 pairs or a constant side."""
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return float("nan")
    return float(sxy / math.sqrt(sxx * syy))


def label_from(value, values: dict, what: str):
    """The label (1, 2, 0) of a dataset value through `values` (its encodings, compared as
    stripped strings), or ("bad_label", detail)."""
    k = str(value).strip() if value is not None else None
    table = {str(a).strip(): b for a, b in values.items()}
    if k not in table:
        return ("bad_label", f"{what} = {value!r}, expected one of {sorted(table)}")
    return table[k]
