"""LLaVA-Critic pairwise data (Xiong et al. 2024, arXiv 2410.02712): GPT-4o's pairwise judgments
of LMM answers, the training data of LLaVA-Critic; no evaluation split is released, so hold out
rows you did not train on (`limit`, or a file of your own hold-out rows in the same layout).

Published: HF lmms-lab/llava-critic-113k, config `pairwise` (40k rows): parquet files
pairwise/train-0000k-of-0000n.parquet, the image embedded as an HF Image struct; columns `id`,
`source`, `conversations` (a list of {"from", "value"}: the human turn holds LLaVA-Critic's
pairwise prompt with "Question: [...]", "The first response: [...]", "The second response: [...]";
the gpt turn the judgment, ending "The better response: [first|second|1|2|A|B]" or saying the two
are "equally good"). Layout read from the dataset card, LLaVA-Critic's own inference example (its
critic prompt) and a public reader of the set; the verdict phrases are unconfirmed beyond those:
a judgment in neither form is a bad label, counted and named.

Figures: accuracy over pairs with a preference (tie labels left out) and accuracy_with_ties;
accuracy_<source> per upstream source."""

from __future__ import annotations

import re

from grlhfv_jax.data.benchmarks import common

NAME, TASK, FORMAT = "llava_critic", "pair", "parquet"
FIELDS = dict(id="id", image="image", conversations="conversations", source="source")
LEADERBOARD = [("accuracy", "Pairwise Acc"), ("accuracy_with_ties", "Acc w. Tie")]
PROMPT = re.compile(
    r"Question: \[(.*?)\]\s*\n\s*(?:The first response|Response 1|Response A): \[(.*?)\]\s*\n\s*"
    r"(?:The second response|Response 2|Response B): \[(.*)\]",
    re.S,
)
BETTER = re.compile(r"The better response: \[?\s*(first|second|1|2|A|B)\b", re.I)


def verdict(judgment: str):
    """The label of LLaVA-Critic's judgment text: 1, 2, 0 (equally good) or None."""
    m = BETTER.findall(judgment)
    if m:
        return 1 if m[-1].lower() in ("first", "1", "a") else 2
    if "equally good" in judgment[-400:].lower():
        return 0
    return None


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    def build(row, file, row_id):
        rid = common.text(common.field(row, fields, "id")) or row_id
        conv = common.field(row, fields, "conversations") or []
        human = next((t.get("value", "") for t in conv if t.get("from") == "human"), None)
        gpt = next((t.get("value", "") for t in conv if t.get("from") == "gpt"), None)
        if human is None or gpt is None:
            return "missing_field", "no human or gpt turn in the conversation"
        m = PROMPT.search(human.replace("<image>", ""))
        if not m:
            return "unsupported", "the human turn is not LLaVA-Critic's pairwise prompt"
        label = verdict(gpt)
        if label is None:
            return "bad_label", f"no verdict in the judgment: ...{gpt[-80:]!r}"
        img, bad = common.with_image(row, fields, file, image_root)
        if bad:
            return bad
        return common.Item(
            rid,
            m.group(1).strip(),
            img,
            (m.group(2).strip(), m.group(3).rstrip().rstrip("]")),
            {"preference": label},
            category=common.text(common.field(row, fields, "source")),
        )

    return common.read_items(path, fields, fmt=fmt, limit=limit, image_root=image_root, problems=problems, build=build)


def figures(items, verdicts) -> dict:
    return {
        "accuracy": common.accuracy(items, verdicts),
        "accuracy_with_ties": common.accuracy(items, verdicts, ties=True),
        **common.by_category(items, verdicts),
    }
