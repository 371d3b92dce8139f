"""Multimodal RewardBench (Yasunaga et al. 2025, arXiv 2502.14191): 5,000 (prompt, chosen,
rejected) triplets over general correctness, general preference, knowledge, reasoning (math,
coding), safety (bias, toxicity) and VQA.

Published: GitHub facebookresearch/multimodal_rewardbench: data/all_data.json after its download
script (a JSON array; images as paths such as images/<source>/<n>.jpg relative to the data
folder); fields `ID`, `Text` (the prompt), `Image`, `Output1`, `Output2`, `Better` ("Output1" or
"Output2"), `Category` (open_generation/correctness_task, open_generation/preference_task,
knowledge, reasoning, safety, vqa). Layout and scoring read from the repo's README and lmms-eval's
lmms_eval/tasks/multimodal_rewardbench/utils.py (a port of the repo's scripts/2_get_accuracy.py):
reasoning splits into reasoning/math (ID starting "math") and reasoning/coding, safety into
safety/bias (ID starting "pairs") and safety/toxicity. Image paths are relative to `image_root`
when set (the repo's root, where images/ lies), else to the JSON file's folder.

Figures: accuracy over all pairs (micro, as the repo's overall) and per category, both the
published categories (accuracy_reasoning, accuracy_safety) and their splits."""

from __future__ import annotations

from grlhfv_jax.data.benchmarks import common

NAME, TASK, FORMAT = "multimodal_rewardbench", "pair", "json"
FIELDS = dict(
    id="ID",
    question="Text",
    image="Image",
    response_1="Output1",
    response_2="Output2",
    label="Better",
    category="Category",
)
LABELS = {"Output1": 1, "Output2": 2}
LEADERBOARD = [
    ("accuracy", "Overall"),
    ("accuracy_open_generation_correctness_task", "General Correctness"),
    ("accuracy_open_generation_preference_task", "General Preference"),
    ("accuracy_knowledge", "Knowledge"),
    ("accuracy_reasoning_math", "Reasoning Math"),
    ("accuracy_reasoning_coding", "Reasoning Coding"),
    ("accuracy_safety_bias", "Safety Bias"),
    ("accuracy_safety_toxicity", "Safety Toxicity"),
    ("accuracy_vqa", "VQA"),
]


def split_category(category: str, item_id: str) -> str:
    c, i = str(category).strip(), str(item_id).lower()
    if c == "safety":
        return "safety/bias" if i.startswith("pairs") else "safety/toxicity"
    if c == "reasoning":
        return "reasoning/math" if i.startswith("math") else "reasoning/coding"
    return c


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        item = common.labelled_pair(row, fields, file, row_id, image_root, LABELS)
        if isinstance(item, common.Item):
            item.category = split_category(common.text(common.field(row, fields, "category")), item.id)
        return item

    return common.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def figures(items, verdicts) -> dict:
    out = {"accuracy": common.accuracy(items, verdicts), **common.by_category(items, verdicts)}
    for top in ("reasoning", "safety"):  # the published categories over their splits
        sel = [(it, v) for it, v in zip(items, verdicts) if it.category.startswith(top + "/")]
        if sel:
            out[f"accuracy_{top}"] = common.accuracy([i for i, _ in sel], [v for _, v in sel])
    return out
