"""LLaVA-Bench-Wilder (LLaVA-NeXT, "LLaVA-NeXT: Stronger LLMs Supercharge Multimodal Capabilities in the
Wild", 2024): real-world user questions with GPT-4V reference answers; `small` (120 items) and
`medium` (1020) splits.

Published: HF lmms-lab/LLaVA-Bench-Wilder, parquet per split (small-*.parquet, medium-*.parquet);
columns question_id, Question, Answer (the GPT-4V reference), image (HF Image struct, embedded):
the names lmms-eval's llava_wilder task reads (the card itself was not read; `fields` maps others). `path`: a split's parquet file or folder.

Judge (lmms-eval's lmms_eval/tasks/llava_wilder/utils.py, its rule text verbatim): the judge sees the
image, the question, the reference as Assistant 1 (told it always gets 10) and the model's answer
as Assistant 2, and writes "s1 s2" (1-10) on its first line; parsed as LLaVA-Bench's.

Figure: relative_score = 100 x mean(model) / mean(reference) (= LLaVA-Bench's ratio), plus
model_score / reference_score (mean x10)."""

from __future__ import annotations

from grlhfv_jax.data.benchmarks import _policy, llava_bench

NAME, TASK, FORMAT = "llava_wilder", "policy", "parquet"
FIELDS = dict(id="question_id", question="Question", image="image", reference="Answer", category="category")
DECODING = {"max_new_tokens": 1024, "temperature": 0.0}
LEADERBOARD = [("relative_score", "Score"), ("model_score", "Model (x10)"), ("reference_score", "Reference (x10)")]
RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image shown to you. \nPlease rate "
    "the helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an "
    "overall score on a scale of 1 to 10, where a higher score indicates better overall performance. Assume "
    "assistant 1 always receive a score of 10 and is the correct answer.\nPlease first output a single line "
    "containing only two values indicating the scores for Assistant 1 and 2, respectively. The two scores are "
    "separated by a space.\nIn the subsequent line, please provide a comprehensive explanation of your "
    "evaluation, avoiding any potential bias and ensuring that the order in which the responses were "
    "presented does not affect your judgment."
)


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        return _policy.reference_item(row, fields, file, row_id, image_root)

    return _policy.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def judge_messages(item, answer: str) -> list:
    content = (
        f"[Question]\n{item.question}\n\n[Assistant 1]\n{item.ref['reference']}\n\n[End of Assistant 1]\n\n"
        f"[Assistant 2]\n{answer}\n\n[End of Assistant 2]\n\n[System]\n{RULE}\n\n"
    )
    return _policy.user(content, image=item.image)


def parse(item, text: str):
    return llava_bench.parse_pair(text)


def figures(items, grades) -> dict:
    ok = [g for g in grades if g is not None]
    ref = _policy.mean([g[0] for g in ok])
    return {
        "relative_score": 100.0 * _policy.mean([g[1] for g in ok]) / ref if ok and ref else float("nan"),
        "model_score": 10 * _policy.mean([g[1] for g in ok]),
        "reference_score": 10 * ref,
    }
