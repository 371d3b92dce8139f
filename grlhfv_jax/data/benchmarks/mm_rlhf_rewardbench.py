"""MM-RLHF-RewardBench (Zhang et al. 2025, MM-RLHF, arXiv 2502.10391): 170 (prompt, chosen,
rejected) pairs; an id may hold several pairs.

Published: HF yifanzhang114/MM-RLHF-RewardBench: mm_reward_bench.jsonl, images/ beside it, and a
parquet copy under data/ (not read); image paths are looked up beside the JSONL, then under
images/ (or under `image_root` when set: unconfirmed which prefix the paths carry); fields `id`, `image` (or `video`:
frames, which this package does not read: counted as unsupported), `prompt`, `chosen`,
`rejected` (plus the annotators' reasons). Layout and scoring read from the MM-RLHF repo's README
(llava/eval/eval_mm_reward_bench.py and its metric script) and a public re-implementation of
that script: the category is the first of mcq / long / short / safety / video found in the image
path; Acc counts a pair right when chosen scores strictly above rejected (ties wrong); Acc+ counts
an id right when all its pairs are right.

Figures: accuracy (Acc), acc_plus (Acc+), accuracy_<category>."""

from __future__ import annotations

import collections

from grlhfv_jax.data.benchmarks import common

NAME, TASK, FORMAT = "mm_rlhf_rewardbench", "pair", "jsonl"
FIELDS = dict(id="id", question="prompt", image="image", video="video", chosen="chosen", rejected="rejected")
CATEGORIES = ("mcq", "long", "short", "safety", "video")
LEADERBOARD = [
    ("accuracy", "Acc"),
    ("acc_plus", "Acc+"),
    ("accuracy_mcq", "MCQ"),
    ("accuracy_long", "Long"),
    ("accuracy_short", "Short"),
    ("accuracy_safety", "Safety"),
]


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        rid = common.text(common.field(row, fields, "id")) or row_id
        img_path = common.field(row, fields, "image")
        if not img_path and common.field(row, fields, "video"):
            return "unsupported", "a video item (frames): not read by this package"
        chosen, rejected = common.field(row, fields, "chosen"), common.field(row, fields, "rejected")
        if chosen is None or rejected is None:
            return "missing_field", f"{fields['chosen']!r} or {fields['rejected']!r} is null"
        img, bad = common.with_image(row, fields, file, image_root)
        if bad:
            return bad
        where = str(img_path) if isinstance(img_path, str) else ""
        cat = next((c for c in CATEGORIES if c in where), "")
        return common.Item(
            f"{rid}#{row_id}",
            common.text(common.field(row, fields, "question")),
            img,
            (str(chosen), str(rejected)),
            {"preference": 1},
            category=cat,
            group=rid,
        )

    return common.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def figures(items, verdicts) -> dict:
    groups = collections.defaultdict(list)
    for it, v in zip(items, verdicts):
        groups[it.group].append(common.correct(v, it.labels["preference"]))
    return {
        "accuracy": common.accuracy(items, verdicts),
        "acc_plus": common.mean(float(all(c == 1.0 for c in g)) for g in groups.values()),
        **common.by_category(items, verdicts),
    }
