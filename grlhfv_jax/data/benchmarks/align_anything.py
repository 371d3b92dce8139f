"""Align-Anything text-image-to-text, test split (Ji et al. 2024, arXiv 2412.15838): the paper's
in-distribution reward-model test.

Published: HF PKU-Alignment/align-anything, config text-image-to-text: parquet (train; val ~1k
rows), the image embedded; `question`, `image`, `response_1`, `response_2`, `overall_response`
(1 or 2), per-dimension preferences and rationales. Read by `data.preference_files` with its
"align_anything" field map (the training data's reader; config `fields` overrides its columns).

Figures: accuracy."""

from __future__ import annotations

from grlhfv_jax.data import preference_files as pf
from grlhfv_jax.data.benchmarks import _preference, common

NAME, TASK, FORMAT = "align_anything", "pair", "auto"
FIELDS = dict(
    question="question", image="image", response_1="response_1", response_2="response_2", label="overall_response"
)
LEADERBOARD = [("accuracy", "Accuracy")]


def read(path, fields, *, fmt="auto", limit=None, image_root=None, problems):
    fm = _preference.fieldmap(pf.FIELD_MAPS["align_anything"], fields)
    return _preference.read(
        path, fm, fmt=fmt, limit=limit, image_root=image_root, problems=problems, labels={"preference": None}
    )


def figures(items, verdicts) -> dict:
    return {"accuracy": common.accuracy(items, verdicts)}
