"""MM-Vet v2 (Yu et al. 2024, "MM-Vet v2: A Challenging Benchmark to Evaluate Large Multimodal Models for
Integrated Capabilities", arXiv 2408.00765): 517 questions, some with several images interleaved in
the text; MM-Vet's six capabilities plus seq (image-text sequence understanding).

Published: GitHub yuweihao/MM-Vet (v2 release mm-vet-v2.zip: mm-vet-v2/mm-vet-v2.json, an object
keyed by id "v2_0".. with {question, answer, capability: [..], added_in}; the question names its
images between <IMG> marks, e.g. "Which is bigger?<IMG>v2_0_0.jpg<IMG>", files in
mm-vet-v2/images/); also HF whyu/mm-vet-v2 and lmms-eval's mmvetv2 task (same question syntax).

Prompt to the model: each <IMG>name<IMG> becomes "<image i>" (1-based, in order) and the images are
put side by side into one picture (our engine takes one image per prompt; lmms-eval's
mmvetv2_group_img does the same, with labels drawn on the images; the official runs interleave).
Judge: MM-Vet's few-shot grader with v2's added sentence on "<image i>" (MM-Vet v2's evaluator);
parsed and aggregated as MM-Vet (module mm_vet), capabilities with seq."""

from __future__ import annotations

import re

from grlhfv_jax.data.benchmarks import _policy, common, mm_vet

NAME, TASK, FORMAT = "mm_vet_v2", "policy", "auto"
FIELDS = dict(id="question_id", question="question", answer="answer", capability="capability")
DECODING = {"max_new_tokens": 1024, "temperature": 0.0}
RETRY_TEMPERATURES = mm_vet.RETRY_TEMPERATURES
CAPABILITIES = mm_vet.CAPABILITIES + ("seq",)
LEADERBOARD = [(c, c.capitalize() if c != "ocr" else "OCR") for c in CAPABILITIES] + [("total", "Total")]
FEW_SHOT = mm_vet.FEW_SHOT.replace(
    "to give a correctness score for the prediction. ",
    "to give a correctness score for the prediction. <image i> in the question indicates where an i-th image is. ",
    1,
)
IMG = re.compile(r"<IMG>\s*([^<>]+?\.(?:jpg|jpeg|png|gif|bmp|webp))\s*<IMG>", re.I)


def split_question(question: str) -> tuple[str, list[str]]:
    """(the question with each image named as "<image i>", the image file names in order)."""
    names = []

    def sub(m):
        names.append(m.group(1).strip())
        return f"<image {len(names)}>"

    return IMG.sub(sub, question).replace("<IMG>", "").strip(), names


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        def prompt():
            text, names = split_question(common.text(common.field(row, fields, "question")))
            if not names:
                return None, ("missing_image", "no <IMG>name<IMG> in the question")
            images = []
            for n in names:
                value = row.get(n) if isinstance(row.get(n), dict) else n  # the parquet copy: a column per image
                img, bad = _policy.image_of(value, file, image_root)
                if bad:
                    return None, (bad[0], f"{n}: {bad[1]}")
                images.append(img)
            return (text, _policy.concat_images(images), {"images": names}), None

        return mm_vet.graded_item(row, fields, row_id, prompt)

    return _policy.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def judge_messages(item, answer: str) -> list:
    return _policy.user(mm_vet.query(FEW_SHOT, item.question, item.ref["answer"], answer))


parse = mm_vet.parse


def figures(items, grades) -> dict:
    return mm_vet.figures(items, grades, CAPABILITIES)
