"""MM-Vet (Yu et al. 2023, "MM-Vet: Evaluating Large Multimodal Models for Integrated Capabilities",
arXiv 2308.02490): 218 open-ended questions on 200 images, each tagged with the capabilities it needs
(rec, ocr, know, gen, spat, math); graded 0-1 by GPT-4 with a few-shot prompt.

Published: GitHub yuweihao/MM-Vet (release mm-vet.zip: mm-vet/mm-vet.json, an object keyed by id
"v1_0".. with {imagename, question, answer, capability: [..]}, and mm-vet/images/<imagename>); also
HF lmms-lab/MMVet (parquet: question_id, image (embedded), question, answer, capability). Both are
read: `path` the mm-vet.json (images in its images/ folder or `image_root`) or the parquet.

Judge (MM-Vet's mm-vet_evaluator.py, prompt verbatim): the few-shot table "Question | Ground truth |
Prediction | Correctness", <AND> / <OR> in the ground truth spaced out, the judge completes the
last cell; the first whitespace token of its reply must be a number in [0, 1]. An unparsed grade is
re-asked at temperatures 0.5, 1.0, 1.5 (the evaluator's rule: +0.5 a try until 2); still unparsed,
the evaluator scores 0.0, we count it (parse_failures) and leave the item out.

Figures (the evaluator's): total = 100 x mean score; <cap> = 100 x mean over the items needing cap;
cap_<a_b_..> = 100 x mean over the items needing exactly that set (the capability integrations)."""

from __future__ import annotations

from grlhfv_jax.data.benchmarks import _policy, common

NAME, TASK, FORMAT = "mm_vet", "policy", "auto"
FIELDS = dict(id="question_id", question="question", image="imagename", answer="answer", capability="capability")
DECODING = {"max_new_tokens": 1024, "temperature": 0.0}
RETRY_TEMPERATURES = (0.5, 1.0, 1.5)  # the evaluator re-asks an unparsed grade, 0.5 hotter each time
CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
LEADERBOARD = [(c, c.capitalize() if c != "ocr" else "OCR") for c in CAPABILITIES] + [("total", "Total")]
FEW_SHOT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""


def capabilities(value) -> list[str]:
    if isinstance(value, str):
        value = [c for c in value.replace(";", ",").split(",")]
    return [str(c).strip() for c in (value or []) if str(c).strip()]


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        def prompt():
            img_value = common.field(row, fields, "image")
            if img_value is None and "image" in row:  # the parquet copy: an embedded image
                img_value = row["image"]
            img, bad = _policy.image_of(img_value, file, image_root)
            if bad:
                return None, bad
            return (common.text(common.field(row, fields, "question")), img, {}), None

        return graded_item(row, fields, row_id, prompt)

    return _policy.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def graded_item(row, fields, row_id, prompt):
    """An MM-Vet (v1 or v2) PolicyItem: the id (else the row's JSON key, else `row_id`), the ground
    truth, the capabilities (sorted and joined: the category); `prompt()`, read once the ground truth
    is there, gives ((question, image bytes, more of ref), None) or (None, (reason, detail))."""
    rid = common.text(common.field(row, fields, "id")) or common.text(row.get("_key")) or row_id
    answer = common.text(common.field(row, fields, "answer"))
    if not answer.strip():
        return "missing_field", f"no ground truth in {fields['answer']!r}"
    got, bad = prompt()
    if bad:
        return bad
    question, img, ref = got
    caps = capabilities(common.field(row, fields, "capability"))
    return _policy.PolicyItem(
        rid, question, img, category="_".join(sorted(caps)), ref={"answer": answer, "capability": caps, **ref}
    )


def query(prompt: str, question: str, answer: str, prediction: str) -> str:
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return f"{prompt}\n{question} | {gt} | {prediction} |"


def judge_messages(item, answer: str) -> list:
    return _policy.user(query(FEW_SHOT, item.question, item.ref["answer"], answer))


def parse(item, text: str):
    """The evaluator's rule: the reply's first whitespace token as a number in [0, 1]."""
    try:
        score = float(text.strip().split(" ")[0].strip())
    except (ValueError, AttributeError, IndexError):
        return None
    return score if 0.0 <= score <= 1.0 else None


def figures(items, grades, caps=CAPABILITIES) -> dict:
    ok = [(it, g) for it, g in zip(items, grades) if g is not None]
    out = {"total": 100 * _policy.mean([g for _, g in ok])}
    for c in caps:
        out[c] = 100 * _policy.mean([g for it, g in ok if c in it.ref["capability"]])
    for combo in sorted({it.category for it, _ in ok}):
        out[f"cap_{combo}"] = 100 * _policy.mean([g for it, g in ok if it.category == combo])
    return out
