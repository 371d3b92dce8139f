"""MIA-Bench (Qian et al. 2024, "MIA-Bench: Towards Better Instruction Following Evaluation of Multimodal
LLMs", arXiv 2407.01509): 400 image-instruction pairs whose instructions stack 1-5 components
(e.g. a length limit, a genre, a mention), each worth part of 10 points.

Published: HF lmms-lab/MIA-Bench (data/test-00000-of-00001.parquet, 400 rows; its card's columns:
image (embedded), instruction, type, num_of_component, components (list of the component texts),
component_weight (list of ints summing to 10), component_type (list: each component's kind, e.g.
"length_limit"); no id column: rows are named by file and row); GitHub apple/ml-mia-bench holds the same records as JSON with image URLs
(download the images and set `fields.image` to a local path column). `path`: the parquet or JSON.

Judge (MIA-Bench's grading prompt, as lmms-eval's mia_bench task carries it, minus lmms-eval's
added sentence on plain-number formatting): the judge sees the instruction, each component with
its weight and the model's answer, and writes "score of component 1: x/w1, ..., total score: z/10".
Parser: each "component i: x/y" and "total score: z/w" (ratios clamped to [0, 1]); no total ->
the mean of the components; nothing found -> unparsed, left out.

Figures: score = 100 x mean total ratio (MIA-Bench's headline); per component kind (when the
records carry component_type) `<kind>` = 100 x mean of that kind's component ratios; and per
instruction type (`type` column) `type_<t>`."""

from __future__ import annotations

import re

from grlhfv_jax.data.benchmarks import _policy, common

NAME, TASK, FORMAT = "mia_bench", "policy", "auto"
FIELDS = dict(
    id="id",
    question="instruction",
    image="image",
    components="components",
    weights="component_weight",
    component_type="component_type",
    type="type",
)
DECODING = {"max_new_tokens": 512, "temperature": 0.0}
LEADERBOARD = [("score", "Overall")]
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
COMPONENT = re.compile(r"(?:score\s+of\s+)?component\s+(\d+)\s*:\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", re.I)
TOTAL = re.compile(r"total\s+score\s*:\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", re.I)


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return list(value)


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        rid = common.text(common.field(row, fields, "id")) or common.text(row.get("_key")) or row_id
        comps = [str(c) for c in _list(common.field(row, fields, "components"))]
        weights = _list(common.field(row, fields, "weights"))
        if not comps or len(comps) != len(weights) or len(comps) > len(ORDINALS):
            return "missing_field", f"{len(comps)} components, {len(weights)} weights"
        img, bad = _policy.image_of(common.field(row, fields, "image"), file, image_root)
        if bad:
            return bad
        kinds = [str(k) for k in _list(common.field(row, fields, "component_type"))]
        return _policy.PolicyItem(
            rid,
            common.text(common.field(row, fields, "question")),
            img,
            category=common.text(common.field(row, fields, "type")),
            ref={
                "components": comps,
                "weights": [float(w) for w in weights],
                "kinds": kinds if len(kinds) == len(comps) else [],
            },
        )

    return _policy.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def _w(w: float) -> str:
    return str(int(w)) if float(w).is_integer() else str(w)


def judge_messages(item, answer: str) -> list:
    comps, w = item.ref["components"], [_w(x) for x in item.ref["weights"]]
    n = len(comps)
    components = ", and ".join(f"the {ORDINALS[i]} component is:' {c}'" for i, c in enumerate(comps))
    components = components[0].upper() + components[1:]
    if n == 1:
        score = f"The first component is worth {w[0]} scores."
    else:
        names = ", ".join(ORDINALS[: n - 1]) + (" and " if n == 2 else ", and ") + ORDINALS[n - 1]
        worth = ", ".join(w[:-1]) + " and " + w[-1]
        score = f"The {names} component is each worth {worth} scores."
    example = ", ".join(f"score of component {i + 1}: x{i + 1}/{w[i]}" for i in range(n))
    text = (
        f"Here is an instruction for a multimodal LLM: ' {item.question} You need to grade if the response from "
        f"the model follows each component of the instruction. {components} The response is:' {answer}' You need "
        f"to score the response and be strict. The total score ranges from 0 to 10, depending on if the response "
        f"follows the instruction. {score} List scores of each component, and the total score in one sentence in "
        f"this format: {example}, total score: z/10. Then explain your reasons."
    )
    return _policy.user(text)


def parse(item, text: str):
    """{"total": ratio, "components": [ratio or None per component]} or None."""
    n = len(item.ref["components"])
    comps = [None] * n
    for num, x, y in COMPONENT.findall(text or ""):
        i = int(num) - 1
        if 0 <= i < n and comps[i] is None:
            comps[i] = max(0.0, min(1.0, float(x) / float(y))) if float(y) else 0.0
    m = TOTAL.search(text or "")
    if m:
        total = max(0.0, min(1.0, float(m.group(1)) / float(m.group(2)))) if float(m.group(2)) else 0.0
    elif any(c is not None for c in comps):
        total = _policy.mean(comps)
    else:
        return None
    return {"total": total, "components": comps}


def figures(items, grades) -> dict:
    ok = [(it, g) for it, g in zip(items, grades) if g is not None]
    out = {"score": 100 * _policy.mean([g["total"] for _, g in ok])}
    kinds: dict = {}
    for it, g in ok:
        for k, c in zip(it.ref["kinds"], g["components"]):
            kinds.setdefault(common.key(k), []).append(c)
    for k in sorted(kinds):
        out[k] = 100 * _policy.mean(kinds[k])
    for t in sorted({it.category for it, _ in ok if it.category}):
        out[f"type_{common.key(t)}"] = 100 * _policy.mean([g["total"] for it, g in ok if it.category == t])
    return out
