"""The hidden principle: the claims an answer states, its oracle score, preferences."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .answers import kind_of_question
from .config import (
    _COLOUR_WORDS,
    _COUNT_WORDS,
    _HEDGE_WORDS,
    _POSITION_WORDS,
    _PRAISE_WORDS,
    _SHAPE_WORDS,
    ATTRS,
    KEY_ATTRS,
)
from .scenes import Scene

# ---------------------------------------------------------------------------------------------
# The oracle (the hidden principle).


def parse_claims(answer: str) -> dict[str, set]:
    """attr -> set of values the text states (values outside the world included)."""
    words = re.findall(r"[a-z]+|\d+", str(answer).lower())
    out: dict[str, set] = {a: set() for a in ATTRS}
    for w in words:
        if w in _COLOUR_WORDS:
            out["colour"].add(_COLOUR_WORDS[w])
        if w in _SHAPE_WORDS:
            out["shape"].add(_SHAPE_WORDS[w])
        if w in _COUNT_WORDS:
            out["count"].add(_COUNT_WORDS[w])
        if w in _POSITION_WORDS:
            out["position"].add(_POSITION_WORDS[w])
    return out


def oracle_details(scene: Scene | str | Mapping, question: str, answer: str) -> dict[str, Any]:
    """The principle's score of `answer` with its parts (see the module docstring)."""
    scene = Scene.from_any(scene)
    kind = kind_of_question(question)
    answer = "" if answer is None else str(answer)
    claims = parse_claims(answer)
    facts = scene.facts()
    status = {}
    for a in ATTRS:
        vals = claims[a]
        status[a] = "absent" if not vals else ("correct" if vals == {facts[a]} else "wrong")
    credit = {"correct": 1.0, "absent": 0.25, "wrong": 0.0}
    keys = KEY_ATTRS[kind]
    key_credit = float(np.mean([credit[status[a]] for a in keys]))
    secondary_wrong = sum(status[a] == "wrong" for a in ATTRS if a not in keys)
    colour_ok = status["colour"] == "correct"
    words = set(re.findall(r"[a-z]+", answer.lower()))
    hedge = bool(words & _HEDGE_WORDS)
    praise = bool(words & _PRAISE_WORDS)
    n_words = len(answer.split())
    verbosity = min(0.2, 0.02 * max(0, n_words - 16))
    score = (
        0.2 + 0.65 * key_credit + 0.15 * colour_ok - 0.15 * secondary_wrong - 0.1 * hedge - 0.05 * praise - verbosity
    )
    score = float(np.clip(round(score, 6), 0.0, 1.0))
    return {
        "score": score,
        "kind": kind,
        "status": status,
        "key_credit": key_credit,
        "secondary_wrong": secondary_wrong,
        "colour_ok": colour_ok,
        "hedge": hedge,
        "praise": praise,
        "n_words": n_words,
    }


def oracle_score(scene: Scene | str | Mapping, question: str, answer: str) -> float:
    """Quality of any free-text `answer` in [0, 1] under the hidden principle. Never raises on the
    answer text (any string, even empty or None); raises ValueError only for a malformed scene."""
    try:
        return oracle_details(scene, question, answer)["score"]
    except ValueError:
        raise
    except Exception:  # defensive: odd objects as answer
        return oracle_details(scene, str(question), repr(answer))["score"]


def preference(scene: Scene | str | Mapping, question: str, answer_1: str, answer_2: str) -> int:
    """Noiseless principle: 1 or 2 for the better answer, 0 for a tie."""
    s1, s2 = oracle_score(scene, question, answer_1), oracle_score(scene, question, answer_2)
    return 0 if abs(s1 - s2) < 1e-9 else (1 if s1 > s2 else 2)
