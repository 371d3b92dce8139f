"""LLaVA-Bench-in-the-Wild (Liu et al. 2023, "Visual Instruction Tuning", arXiv 2304.08485): 60 questions
on 24 images in three categories (conv, detail, complex), each with a GPT-4 reference answer and a
human caption of the image.

Published: HF lmms-lab/llava-bench-in-the-wild (one parquet, test split; columns question_id,
question, image (HF Image struct, embedded), caption, gpt_answer, category, image_id), from the
original HF liuhaotian/llava-bench-in-the-wild (questions.jsonl {question_id, image, text, category},
context.jsonl {id, image, caption}, answers_gpt4.jsonl {question_id, text}, images/). Both are read:
`path` a parquet file (or folder of them), or the original folder holding questions.jsonl (the
three files joined by question_id / image, images in images/ or `image_root`).

Judge (LLaVA's llava/eval/eval_gpt_review_visual.py and table/rule.json, verbatim): a text-only
judge sees the caption, the question, the reference answer as Assistant 1 and the model's answer as
Assistant 2, and writes "s1 s2" (1-10) on its first line; judged at temperature 0.2 as LLaVA's
script. Parser: LLaVA's parse_score (first line, commas as spaces, exactly two numbers; else
unparsed).

Figures (LLaVA's summarize_gpt_review.py): relative score = 100 x sum(model) / sum(reference) over
the items of a category (`relative_score_<conv|detail|complex>`) and over all (`relative_score`);
`model_score` and `reference_score` the mean 1-10 scores (x10 as LLaVA prints them)."""

from __future__ import annotations

import json
import os

from grlhfv_jax.data.benchmarks import _policy, common

NAME, TASK, FORMAT = "llava_bench", "policy", "parquet"
FIELDS = dict(
    id="question_id", question="question", image="image", caption="caption", reference="gpt_answer", category="category"
)
DECODING = {"max_new_tokens": 1024, "temperature": 0.0}
JUDGE_TEMPERATURE = 0.2  # LLaVA's eval_gpt_review_*.py (and lmms-eval's llava_in_the_wild) judge at 0.2
CATEGORIES = ("conv", "detail", "complex")
LEADERBOARD = [
    ("relative_score", "All"),
    ("relative_score_conv", "Conv"),
    ("relative_score_detail", "Detail"),
    ("relative_score_complex", "Complex"),
]
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"
RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the "
    "visual content in the image is represented with a few sentences describing the image. \nPlease rate the "
    "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall "
    "score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease first "
    "output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\nIn the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
    "which the responses were presented does not affect your judgment."
)


def _original_rows(folder: str):
    """The original layout's three JSONL files joined: rows in the parquet's column names."""

    def load(name):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return [json.loads(x) if x.strip() else None for x in f]

    q_file = os.path.join(folder, "questions.jsonl")
    captions = {c["image"]: c.get("caption") for c in load("context.jsonl") if c}
    answers = {a["question_id"]: a.get("text") for a in load("answers_gpt4.jsonl") if a}
    with open(q_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                q = json.loads(line)
                if not isinstance(q, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                yield q_file, f"questions-{i}", ValueError(f"malformed JSON line: {e}")
                continue
            yield (
                q_file,
                f"questions-{i}",
                {
                    "question_id": q.get("question_id"),
                    "question": q.get("text"),
                    "image": q.get("image"),
                    "caption": captions.get(q.get("image")),
                    "gpt_answer": answers.get(q.get("question_id")),
                    "category": q.get("category"),
                },
            )


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    rows = None
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "questions.jsonl")):
        rows = _original_rows(path)
        image_root = image_root or os.path.join(path, "images")

    def build(row, file, row_id):
        item = _policy.reference_item(row, fields, file, row_id, image_root)
        if isinstance(item, _policy.PolicyItem):
            item.ref["caption"] = caption(common.field(row, fields, "caption"))
        return item

    return _policy.read_items(
        path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build, rows=rows
    )


def caption(value) -> str:
    """The caption(s): a list (some copies hold several) joined by newlines, as lmms-eval does."""
    return "\n".join(str(c) for c in value) if isinstance(value, (list, tuple)) else common.text(value)


def judge_messages(item, answer: str) -> list:
    content = (
        f"[Context]\n{item.ref['caption']}\n\n[Question]\n{item.question}\n\n"
        f"[{ROLE} 1]\n{item.ref['reference']}\n\n[End of {ROLE} 1]\n\n"
        f"[{ROLE} 2]\n{answer}\n\n[End of {ROLE} 2]\n\n[System]\n{RULE}\n\n"
    )
    return _policy.user(content, system=SYSTEM)


def parse_pair(text: str):
    """LLaVA's parse_score: the first line's two numbers (commas read as spaces), or None."""
    try:
        parts = text.split("\n")[0].replace(",", " ").split()
        if len(parts) == 2:
            return [float(parts[0]), float(parts[1])]
    except (ValueError, AttributeError):
        pass
    return None


def parse(item, text: str):
    return parse_pair(text)


def relative(grades) -> float:
    ref = sum(g[0] for g in grades)
    return 100.0 * sum(g[1] for g in grades) / ref if grades and ref else float("nan")


def figures(items, grades) -> dict:
    ok = [(it, g) for it, g in zip(items, grades) if g is not None]
    out = {
        "relative_score": relative([g for _, g in ok]),
        "model_score": 10 * _policy.mean([g[1] for _, g in ok]),
        "reference_score": 10 * _policy.mean([g[0] for _, g in ok]),
    }
    cats = sorted({it.category for it, _ in ok if it.category}, key=lambda c: (c not in CATEGORIES, c))
    for c in cats:
        out[f"relative_score_{common.key(c)}"] = relative([g for it, g in ok if it.category == c])
    return out
