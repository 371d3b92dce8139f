"""BeaverTails-V evaluation split (Ji et al. 2025, Safe RLHF-V, arXiv 2503.17682): the paper's
out-of-distribution safety preference test, 20 harm categories, two labels per pair.

Published: HF PKU-Alignment/BeaverTails-V (pin a revision: the current card is single-response;
the pairwise schema lives in older revisions and in the saferlhf-v/BeaverTails-V copy): one
parquet folder per category (20 configs), splits train / evaluation, the image embedded;
`question`, `image`, `category`, `response_1`, `response_2`, `more_helpful_response_id` and
`safer_response_id` ("1" / "2"). Read by `data.preference_files` with its
"beavertails_v_helpful" field map (the other label and the category as metadata).

Figures: helpful_accuracy, safe_accuracy (each label against the same judgments) and both per
category (helpful_accuracy_<category>, safe_accuracy_<category>)."""

from __future__ import annotations

from grlhfv_jax.data import preference_files as pf
from grlhfv_jax.data.benchmarks import _preference, common

NAME, TASK, FORMAT = "beavertails_v", "pair", "auto"
FIELDS = dict(
    question="question",
    image="image",
    response_1="response_1",
    response_2="response_2",
    label="more_helpful_response_id",
    safe="safer_response_id",
    category="category",
)
LEADERBOARD = [("helpful_accuracy", "Helpful Acc"), ("safe_accuracy", "Safe Acc")]


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    base = pf.FIELD_MAPS["beavertails_v_helpful"]
    fm = _preference.fieldmap(base, {k: v for k, v in fields.items() if k not in ("safe", "category")})
    fm = pf.dataclasses.replace(fm, meta=(fields["category"], fields["safe"]))
    return _preference.read(
        path,
        fm,
        fmt=fmt,
        limit=limit,
        image_root=image_root,
        problems=problems,
        labels={"helpful": None, "safe": fields["safe"]},
        category=fields["category"],
    )


def figures(items, verdicts) -> dict:
    out = {}
    for label in ("helpful", "safe"):
        out[f"{label}_accuracy"] = common.accuracy(items, verdicts, label)
        out.update(common.by_category(items, verdicts, prefix=f"{label}_accuracy_", label=label))
    return out
