"""MLLM-as-a-Judge (Chen et al. 2024, ICML, arXiv 2402.04788): human judgments of MLLM answers in
three settings; this module reads two: pair comparison and scoring.

Published: GitHub Dongping-Chen/MLLM-Judge (and HF shuaishuaicdp/MLLM-Judge):
Dataset/Benchmark/{pair,score,batch}.jsonl (batch not read; Dataset/Benchmark_Lite/ has the same
layout) + Dataset/image/<n>.jpg, named bare in `image_path` ("0.jpg": set `image_root` to the
image folder). pair: `pair_id` (unique; `id` is the image's), `instruction`, `answer1` and
`answer2` ({"name", "answer"} objects; plain texts read too), `image_path`, `human_answer` "A",
"B" or "C" (C = tie). score: `score_id`, `instruction`, `answer`, `name`, `image_path`, `human`
(1-5, an int or a string such as "4"). Layout read from the repo's Benchmark_Lite files and
README; its judge prompts are in scripts/prompt.py (not used: our GRM writes its own format).

Figures, pair (`mllm_judge_pair`): accuracy without ties (pairs labelled C left out; a tie
verdict is wrong) and accuracy_with_ties (all pairs; on a C pair only a tie verdict is right).
score (`mllm_judge_score`): pearson between the model's score and the human score over the items
whose score parsed. A GRM scores one answer by judging it against itself (it is both responses:
the mean of its two scores); a score-only RM gives its scalar."""

from __future__ import annotations

from grlhfv_jax.data.benchmarks import common

FIELDS_PAIR = dict(
    id="pair_id",
    question="instruction",
    image="image_path",
    answer_1="answer1",
    answer_2="answer2",
    label="human_answer",
)
FIELDS_SCORE = dict(id="score_id", question="instruction", image="image_path", response="answer", human="human")
LABELS = {"A": 1, "B": 2, "C": 0}


def _answer(value):
    return value.get("answer") if isinstance(value, dict) else value


def read_pairs(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        return common.labelled_pair(row, fields, file, row_id, image_root, LABELS, ("answer_1", "answer_2"), _answer)

    return common.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def read_scores(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        rid = common.text(common.field(row, fields, "id")) or row_id
        answer, human = common.field(row, fields, "response"), common.field(row, fields, "human")
        if answer is None:
            return "missing_field", f"{fields['response']!r} is null"
        try:
            human = float(str(human).strip())
        except ValueError:
            return "bad_label", f"{fields['human']!r} = {human!r} is not a number"
        if human != human:
            return "bad_label", f"{fields['human']!r} is NaN"
        img, bad = common.with_image(row, fields, file, image_root)
        if bad:
            return bad
        return common.Item(rid, common.text(common.field(row, fields, "question")), img, (str(answer),), human=human)

    return common.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def pair_figures(items, verdicts) -> dict:
    return {
        "accuracy": common.accuracy(items, verdicts),
        "accuracy_with_ties": common.accuracy(items, verdicts, ties=True),
        "tie_labels": float(sum(it.labels["preference"] == 0 for it in items)),
    }


def score_figures(items, scores) -> dict:
    kept = [(it.human, s) for it, s in zip(items, scores) if s is not None]
    return {"pearson": common.pearson([h for h, _ in kept], [s for _, s in kept]), "scored": float(len(kept))}


class Pair:
    NAME, TASK, FORMAT, FIELDS = "mllm_judge_pair", "pair", "jsonl", FIELDS_PAIR
    LEADERBOARD = [("accuracy_with_ties", "Pair w. Tie"), ("accuracy", "Pair w.o. Tie")]
    read, figures = staticmethod(read_pairs), staticmethod(pair_figures)


class Score:
    NAME, TASK, FORMAT, FIELDS = "mllm_judge_score", "score", "jsonl", FIELDS_SCORE
    LEADERBOARD = [("pearson", "Score (Pearson)"), ("scored", "Scored")]
    read, figures = staticmethod(read_scores), staticmethod(score_figures)
