"""Supervised GRM judgments built from a dataset's own annotations: the paper's GRM+SFT baseline
(method.md, "Baselines": the GRM supervised on the dataset's principle and per-response scores).

A `JudgmentSpec` names the columns of a preference record's `meta` (kept by its field map,
`data.preference_files.FIELD_MAPS`) that hold each response's rate on each of the dataset's
criteria (its principle) and, optionally, each response's critique. `judgment(meta, spec)` writes
the GRM template's three output lines from them:

    Specific Criteria: instruction following (weight 1/5); ...; safety (weight 1/5).
    Analysis: Response 1: instruction following 3/3, ..., safety 3/3. <critique 1> Response 2: ...
    Scores: \\boxed{s1, s2}

Each response's score is the mean of its rates mapped linearly from the spec's `scale` onto the
GRM's integers 1..10 (rounded half to even): the dataset's scores, whatever the pair's overall label
says (a tie stays a tie). `sft.grm.judgments` picks a spec by name ("world": the synthetic world's
warm-start judgments, not built here).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class JudgmentSpec:
    """criteria: (the criterion as the judgment writes it, column stem: `<stem>_1` / `<stem>_2` hold
    response 1's / 2's rate); scale: the rates' (lowest, highest); critiques: the columns of
    response 1's / 2's critique (None: the analysis is the rates alone)."""

    criteria: tuple[tuple[str, str], ...]
    scale: tuple[float, float]
    critiques: tuple[str, str] | None = None


# Align-Anything text-image-to-text: five fine-grained rates per response (the dataset card's
# annotation dimensions, each 0-3) and a language critique per response.
ALIGN_ANYTHING = JudgmentSpec(
    criteria=(
        ("instruction following", "prompt_following_rate"),
        ("objective rules", "objective_rules_rate"),
        ("clarity", "clarity_rate"),
        ("information richness", "information_richness_rate"),
        ("safety", "safety_rate"),
    ),
    scale=(0.0, 3.0),
    critiques=("text_critique_1", "text_critique_2"),
)

# sft.grm.judgments -> spec ("world": the synthetic world's own judgments)
JUDGMENTS: dict[str, JudgmentSpec | None] = {"world": None, "align_anything": ALIGN_ANYTHING}


def columns(spec: JudgmentSpec) -> tuple[str, ...]:
    """The meta columns `judgment` reads."""
    rates = tuple(f"{stem}_{i}" for _, stem in spec.criteria for i in (1, 2))
    return rates + (tuple(spec.critiques) if spec.critiques else ())


def score(rates: list[float], scale: tuple[float, float]) -> int:
    """The mean of `rates` mapped from `scale` onto 1..10."""
    lo, hi = scale
    return min(max(int(round(1 + 9 * (sum(rates) / len(rates) - lo) / (hi - lo))), 1), 10)


def judgment(meta: dict, spec: JudgmentSpec) -> str:
    """The judgment of a pair from its `meta` (module doc). ValueError naming the column when a rate
    is missing or not a number."""
    rates = []
    for i in (1, 2):
        row = []
        for _, stem in spec.criteria:
            value = meta.get(f"{stem}_{i}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"column {stem}_{i} = {value!r}: expected a number (a rate in {spec.scale})")
            row.append(float(value))
        rates.append(row)
    weight = f"1/{len(spec.criteria)}"
    criteria = "; ".join(f"{name} (weight {weight})" for name, _ in spec.criteria)
    parts = []
    for i, row in zip((1, 2), rates):
        rated = [f"{name} {r:g}/{spec.scale[1]:g}" for (name, _), r in zip(spec.criteria, row)]
        text = f"Response {i}: " + ", ".join(rated)
        critique = str(meta.get(spec.critiques[i - 1]) or "").strip() if spec.critiques else ""
        parts.append(text + "." + (f" {critique}" if critique else ""))
    s1, s2 = (score(row, spec.scale) for row in rates)
    return f"Specific Criteria: {criteria}.\nAnalysis: {' '.join(parts)}\nScores: \\boxed{{{s1}, {s2}}}"
