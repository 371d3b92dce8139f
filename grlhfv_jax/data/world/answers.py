"""Questions and candidate answers: claims, styles, restyling, best answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import (
    ATTRS,
    COLOURS,
    COUNTS,
    HEDGES,
    KEY_ATTRS,
    NUMBER_WORDS,
    POSITION_PHRASES,
    POSITIONS,
    PRAISE_ONLY,
    PRAISE_SUFFIXES,
    QUESTIONS,
    RESTYLE_STYLES,
    SHAPES,
    WorldConfig,
)
from .scenes import Scene

# ---------------------------------------------------------------------------------------------
# Questions and answers.


def kind_of_question(question: str) -> str:
    """The question kind from its text: exact template match, else keywords, else 'describe'."""
    q = str(question).strip()
    for k, texts in QUESTIONS.items():
        if q in texts:
            return k
    ql = q.lower()
    if "colour" in ql or "color" in ql:
        return "colour"
    if "how many" in ql or "count" in ql or "number" in ql:
        return "count"
    if "shape" in ql:
        return "shape"
    if "where" in ql or "which part" in ql:
        return "where"
    return "describe"


def _noun(shape: str | None, plural: bool) -> str:
    base = shape if shape is not None else "object"
    return base + "s" if plural else base


def _np(claim: Mapping[str, Any], plural: bool, with_count: bool = True) -> str:
    """Noun phrase: [count] [colour] shape-or-object(s)."""
    words = []
    if with_count and "count" in claim:
        words.append(NUMBER_WORDS[claim["count"]])
    if "colour" in claim:
        words.append(claim["colour"])
    words.append(_noun(claim.get("shape"), plural))
    return " ".join(words)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def render_answer(kind: str, claim: Mapping[str, Any], true_count: int) -> str:
    """Text stating exactly the facts in `claim` (attr -> value) for a question of `kind`."""
    plural = (claim["count"] != 1) if "count" in claim else (true_count != 1)
    are = "are" if plural else "is"
    pron = "They are" if plural else "It is"
    pos = (" " + POSITION_PHRASES[claim["position"]]) if "position" in claim else ""
    secondary = set(claim) - set(KEY_ATTRS[kind])
    if kind == "colour":
        if not secondary:
            return f"{pron} {claim['colour']}."
        rest = {k: v for k, v in claim.items() if k != "colour"}
        return f"The {_np(rest, plural)}{pos} {are} {claim['colour']}."
    if kind == "count":
        if not secondary:
            return f"There {are} {NUMBER_WORDS[claim['count']]}."
        return f"There {are} {_np(claim, plural)}{pos}."
    if kind == "shape":
        if not secondary:
            return f"{pron} {'' if plural else 'a '}{_noun(claim['shape'], plural)}."
        return f"{pron} {_np(claim, plural)}{pos}."
    if kind == "where":
        if not secondary:
            return f"{pron}{pos}."
        return f"The {_np(claim, plural)} {are}{pos}."
    if kind == "describe":
        if "position" not in claim:
            return _cap(_np(claim, plural)) + "."
        return f"There {are} {_np(claim, plural)}{pos}."
    raise ValueError(f"unknown question kind {kind!r}")


def _wrong_value(rng: np.random.Generator, attr: str, truth: Any) -> Any:
    values = {"colour": list(COLOURS), "count": list(COUNTS), "shape": list(SHAPES), "position": list(POSITIONS)}[attr]
    others = [v for v in values if v != truth]
    return others[int(rng.integers(len(others)))]


def sample_claim(
    rng: np.random.Generator,
    scene: Scene,
    kind: str,
    cfg: WorldConfig,
    *,
    detailed: bool,
    attrs: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Which facts an answer states (`attrs`, drawn if None), with right or wrong values."""
    facts = scene.facts()
    keys = KEY_ATTRS[kind]
    if attrs is None:
        if kind == "describe":  # terse descriptions leave the position out
            attrs = ATTRS if detailed else ("colour", "count", "shape")
        elif not detailed:
            attrs = keys
        else:
            others = [a for a in ATTRS if a not in keys]
            chosen = [a for a in others if rng.random() < 0.6] or [_pick(rng, others)]
            attrs = tuple(a for a in ATTRS if a in keys or a in chosen)
    claim: dict[str, Any] = {}
    for a in attrs:
        if kind == "describe":
            p_wrong = cfg.p_describe_wrong
        else:
            p_wrong = (1.0 - cfg.p_key_correct) if a in keys else cfg.p_secondary_wrong
        claim[a] = _wrong_value(rng, a, facts[a]) if rng.random() < p_wrong else facts[a]
    return claim


def _pick(rng: np.random.Generator, options) -> Any:
    return options[int(rng.integers(len(options)))]


def sample_style(rng: np.random.Generator, cfg: WorldConfig) -> str:
    names = [s for s, _ in cfg.style_weights]
    w = np.array([x for _, x in cfg.style_weights], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def sample_answer(
    rng: np.random.Generator,
    scene: Scene,
    kind: str,
    cfg: WorldConfig,
    style: str | None = None,
    form: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A candidate answer and its form (style, stated attributes, hedge / praise phrase).

    Passing the `form` of another answer gives the same template with freshly drawn values."""
    if form is None:
        style = sample_style(rng, cfg) if style is None else style
        detailed = style == "detailed" or (style in ("hedged", "praised") and rng.random() < 0.5)
        form = {
            "style": style,
            "detailed": detailed,
            "attrs": None,
            "hedge": _pick(rng, HEDGES),
            "praise": _pick(rng, PRAISE_SUFFIXES),
            "praise_only": _pick(rng, PRAISE_ONLY),
        }
    form = dict(form)
    if form["style"] == "praise_only":
        return form["praise_only"], form
    claim = sample_claim(rng, scene, kind, cfg, detailed=form["detailed"], attrs=form["attrs"])
    form["attrs"], form["claim"] = tuple(claim), claim
    return styled(render_answer(kind, claim, scene.count), form), form


def styled(text: str, form: Mapping[str, Any]) -> str:
    """`text` (a rendered claim) in the style of `form`: hedged, praised or as it is."""
    if form["style"] == "hedged":
        return f"{form['hedge']} {text[:1].lower()}{text[1:]}"
    if form["style"] == "praised":
        return f"{text} {form['praise']}"
    return text


def restyle(rng: np.random.Generator, answer: str, weights: Mapping[str, float]) -> str:
    """`answer` in a style drawn from `weights` (style name in RESTYLE_STYLES -> weight): "plain"
    keeps it, "hedged" prefixes a hedge, "praised" appends self-praise, "praise_only" replaces it
    by self-praise. The facts stay the same (or are all gone): a warm start trained on these
    states the facts it sees, in a style the principle dislikes."""
    bad = set(weights) - set(RESTYLE_STYLES)
    if bad:
        raise ValueError(f"restyle: unknown style(s) {sorted(bad)}; styles are {RESTYLE_STYLES}")
    names = list(weights)
    w = np.array([float(weights[k]) for k in names])
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"restyle: weights must be >= 0 with a positive sum, got {dict(weights)}")
    style = names[int(rng.choice(len(names), p=w / w.sum()))]
    if style == "praise_only":
        return _pick(rng, PRAISE_ONLY)
    return styled(answer, {"style": style, "hedge": _pick(rng, HEDGES), "praise": _pick(rng, PRAISE_SUFFIXES)})


def good_answer(rng: np.random.Generator, scene: Scene, kind: str) -> str:
    """A best-possible answer (oracle score 1): the asked facts right, the colour named, no
    hedging or praise; sometimes with other right facts too."""
    facts = scene.facts()
    claim = {a: facts[a] for a in KEY_ATTRS[kind]}
    claim["colour"] = facts["colour"]
    for a in ATTRS:
        if a not in claim and rng.random() < 0.5:
            claim[a] = facts[a]
    return render_answer(kind, claim, scene.count)
