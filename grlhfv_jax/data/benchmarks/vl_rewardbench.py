"""VL-RewardBench (Li et al. 2024, arXiv 2411.17451): 1,250 pairs from general VQA, hallucination
and reasoning sets, with human-verified rankings.

Published: HF MMInstruction/VL-RewardBench, one parquet (split test), the image embedded as an HF
Image struct {bytes, path}; columns `id`, `query`, `response` (a list of two texts),
`human_ranking` (a rank per response, 0 = better: [0, 1] means the first is better), plus
`models`, `judge`, `rationale`, `query_source`, `ground_truth`. Layout and scoring read from the
dataset card and lmms-eval's lmms_eval/tasks/vl_rewardbench/utils.py (the group of an item is the
prefix of its id before "-" / "_": rlhf, rlaif, hallucination -> hallucination; mathverse, mmmu ->
reasoning; wildvision, vlfeedback and anything else -> general).

Figures: accuracy over all pairs (overall) and macro_accuracy (mean of the three groups'
accuracies; lmms-eval reports only this macro figure, under the name vlreward_score)."""

from __future__ import annotations

from grlhfv_jax.data.benchmarks import common

NAME, TASK, FORMAT = "vl_rewardbench", "pair", "parquet"
FIELDS = dict(id="id", question="query", image="image", responses="response", ranking="human_ranking")
GROUPS = {
    "mathverse": "reasoning",
    "mmmu": "reasoning",
    "hallucination": "hallucination",
    "rlhf": "hallucination",
    "rlaif": "hallucination",
    "wildvision": "general",
    "vlfeedback": "general",
}
LEADERBOARD = [
    ("accuracy", "Overall Acc"),
    ("macro_accuracy", "Macro Acc"),
    ("accuracy_general", "General"),
    ("accuracy_hallucination", "Hallucination"),
    ("accuracy_reasoning", "Reasoning"),
]


def group(item_id: str) -> str:
    return GROUPS.get(str(item_id).split("-")[0].split("_")[0].lower(), "general")


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        rid = common.text(common.field(row, fields, "id")) or row_id
        resp, rank = common.field(row, fields, "responses"), common.field(row, fields, "ranking")
        if not isinstance(resp, (list, tuple)) or len(resp) != 2 or any(r is None for r in resp):
            return "missing_field", f"{fields['responses']!r} is not a list of two responses: {str(resp)[:80]}"
        if not isinstance(rank, (list, tuple)) or sorted(int(r) for r in rank) != [0, 1]:
            return "bad_label", f"{fields['ranking']!r} = {rank!r}, expected [0, 1] or [1, 0]"
        img, bad = common.with_image(row, fields, file, image_root)
        if bad:
            return bad
        return common.Item(
            rid,
            common.text(common.field(row, fields, "question")),
            img,
            (str(resp[0]), str(resp[1])),
            {"preference": [int(r) for r in rank].index(0) + 1},
            category=group(rid),
        )

    return common.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def figures(items, verdicts) -> dict:
    groups = common.by_category(items, verdicts)
    return {
        "accuracy": common.accuracy(items, verdicts),
        **groups,
        "macro_accuracy": common.mean(v for v in groups.values() if v == v),
    }
