"""What the policy benchmarks share (MIA-Bench, LLaVA-Bench-in-the-Wild, LLaVA-Bench-Wilder, MM-Vet,
MM-Vet v2, MM-SafetyBench, MSS-Bench): the model under test answers each item, a judge model (a
GPT-4o-class model behind an OpenAI-compatible endpoint, never the trained GRM) grades each answer
with the benchmark's published prompt, and the benchmark's own aggregation turns the grades into
its leaderboard's figures.

A policy benchmark module has
    NAME, TASK = "policy", FORMAT, FIELDS (our field -> its column)
    DECODING: {"max_new_tokens": n, "temperature": t}   the answers' decoding (overridable per benchmark)
    read(path, fields, *, fmt, limit, image_root, problems) -> [PolicyItem]
    judge_messages(item, answer) -> chat messages for the judge ([{"role", "content"}], OpenAI format)
    parse(item, judge_text) -> the item's grade, or None when the judge's text does not parse
    figures(items, grades) -> {metric: value}         grades None (unparsed / judge failed) left out
    LEADERBOARD: [(metric, column title)]
    JUDGE_TEMPERATURE (optional, default 0): the published judging temperature (LLaVA-Bench's 0.2)
    RETRY_TEMPERATURES (optional): temperatures at which an unparsed grade is asked again (MM-Vet's evaluator)
Figures are on the benchmark's own scale (0-100 for scores and rates), as its leaderboard prints them.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os

from grlhfv_jax.data.benchmarks import common


@dataclasses.dataclass
class PolicyItem:
    """One prompt for the model under test. `question`: the text the model sees (the benchmark's own
    prompt prefix included); `image`: encoded bytes; `category`: the figure's breakdown; `ref`: what
    the judge prompt and the aggregation need (reference answer, caption, components, ...)."""

    id: str
    question: str
    image: bytes
    category: str = ""
    ref: dict = dataclasses.field(default_factory=dict)


def user(text: str, image: bytes | None = None, system: str | None = None) -> list:
    """Chat messages: an optional system message and one user message (text, then the image as a
    data URL when given)."""
    head = [{"role": "system", "content": system}] if system is not None else []
    if image is None:
        return head + [{"role": "user", "content": text}]
    url = "data:image/png;base64," + base64.b64encode(png(image)).decode("ascii")
    return head + [
        {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}
    ]


def png(data: bytes) -> bytes:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    from PIL import Image

    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def concat_images(images: list[bytes]) -> bytes:
    """Several encoded images side by side (each scaled to the first one's height) as one PNG: the
    engine takes one image per prompt."""
    if len(images) == 1:
        return images[0]
    from PIL import Image

    ims = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    h = ims[0].height
    ims = [im if im.height == h else im.resize((max(1, round(im.width * h / im.height)), h)) for im in ims]
    out = Image.new("RGB", (sum(im.width for im in ims), h))
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def keyed_rows(path: str, fmt: str):
    """(file, row id, row) of a JSON file whose top level is an object of objects keyed by id (MM-Vet's
    mm-vet.json, MM-SafetyBench's processed_questions/*.json): the key is the row's id ("_key").
    Any other layout goes through `common.rows` (parquet, JSONL, a JSON array)."""
    for file in common.files(path, fmt):
        if file.endswith(".json"):
            try:
                with open(file, encoding="utf-8") as f:
                    data = json.load(f)
            except ValueError:
                data = None
            if (
                isinstance(data, dict)
                and data
                and all(isinstance(v, dict) for v in data.values())
                and "data" not in data
            ):
                for k, v in data.items():
                    yield file, str(k), dict(v, _key=str(k))
                continue
        yield from common.rows(file, fmt)


def read_items(path, fields, *, fmt, limit, image_root, problems, build, rows=None) -> list[PolicyItem]:
    """Items of `path`: `build(row, file, row_id)` returns a PolicyItem, a list of them, or
    (reason, detail) for a bad row; malformed rows and whatever `build` rejects are counted and
    named in `problems`, never raised."""
    items = []
    for _, row_id, _, built in common.built_rows(
        rows if rows is not None else keyed_rows(path, fmt), items, limit, problems, build
    ):
        if isinstance(built, tuple):
            problems.add(row_id, *built)
            continue
        for it in built if isinstance(built, list) else [built]:
            if isinstance(it, tuple):  # one bad part of a row (e.g. one of MSS-Bench's two images)
                problems.add(f"{row_id}", *it)
            elif not it.question.strip():
                problems.add(it.id, "empty_text", "an empty question")
            else:
                items.append(it)
    return items[:limit] if limit is not None else items


def reference_item(row, fields, file: str, row_id: str, image_root: str | None):
    """A PolicyItem judged against a reference answer (LLaVA-Bench's and LLaVA-Bench-Wilder's
    rows): fields id, question, image, reference, category; ref {"reference": ...}. Or
    (reason, detail) for a row without a reference or an image."""
    rid = common.text(common.field(row, fields, "id")) or row_id
    ref = common.text(common.field(row, fields, "reference"))
    if not ref.strip():
        return "missing_field", f"no reference answer in {fields['reference']!r}"
    img, bad = image_of(common.field(row, fields, "image"), file, image_root)
    if bad:
        return bad
    return PolicyItem(
        rid,
        common.text(common.field(row, fields, "question")),
        img,
        category=common.text(common.field(row, fields, "category")),
        ref={"reference": ref},
    )


def image_of(value, file: str, image_root: str | None):
    """(bytes, None) or (None, (reason, detail)) for an image value (HF struct, bytes or a path)."""
    if value is None or value == "" or (isinstance(value, dict) and not value.get("bytes") and not value.get("path")):
        return None, ("missing_image", "no image value")
    data, why = common.image(value, file, image_root)
    if data is None:
        reason = "missing_image" if why.startswith(("no file", "no image", "empty")) else "undecodable_image"
        return None, (reason, why)
    return data, None


def mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else float("nan")


def root_of(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
