"""Records of every split: pairs, the GRM warm start's judgments, texts for the tokenizer."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .answers import _np, _pick, good_answer, render_answer, sample_answer, sample_style, styled
from .config import (
    _HEDGE_WORDS,
    _PRAISE_WORDS,
    _SPLIT_ID,
    COLOURS,
    GRM_ANALYSIS,
    GRM_CRITERIA,
    HEDGES,
    KINDS,
    PAIR_SPLITS,
    POSITION_PHRASES,
    PRAISE_ONLY,
    PRAISE_SUFFIXES,
    QUESTIONS,
    SHAPES,
    SPLITS,
    STYLE_PAIR_STYLES,
    STYLE_WORDS,
    WorldConfig,
)
from .oracle import oracle_score, parse_claims
from .scenes import Scene, encode_png, render, sample_scene

# ---------------------------------------------------------------------------------------------
# Records.


def _mentions_heldout_combo(text: str, cfg: WorldConfig) -> bool:
    c = parse_claims(text)
    return any(col in c["colour"] and shp in c["shape"] for col, shp in cfg.heldout_combos)


def _record_rng(cfg: WorldConfig, split: str, index: int) -> np.random.Generator:
    if split not in _SPLIT_ID:
        raise KeyError(f"unknown split {split!r}; splits are {SPLITS}")
    return np.random.default_rng([cfg.seed, _SPLIT_ID[split], int(index)])


def _scene_and_kind(rng: np.random.Generator, cfg: WorldConfig, split: str) -> tuple[Scene, str, str]:
    """(scene, kind, heldout) where heldout is '', 'kind', 'combo' or 'both'."""
    all_combos = [(c, s) for c in COLOURS for s in SHAPES]
    held = set(cfg.heldout_combos)
    if split != "grm_test_ood":
        train_combos = [x for x in all_combos if x not in held]
        scene = sample_scene(rng, cfg, combos=train_combos)
        return scene, _pick(rng, cfg.train_kinds), ""
    while True:  # OOD: a held-out kind, a held-out combination, or both
        scene = sample_scene(rng, cfg, combos=all_combos)
        kind = _pick(rng, KINDS)
        hk, hc = kind in cfg.heldout_kinds, (scene.colour, scene.shape) in held
        if hk or hc:
            return scene, kind, {(True, True): "both", (True, False): "kind", (False, True): "combo"}[(hk, hc)]


def _sample_pair(
    rng: np.random.Generator, scene: Scene, kind: str, question: str, cfg: WorldConfig, avoid_heldout: bool
) -> tuple[str, str, float, float, str]:
    """Two answers whose oracle scores differ by >= min_margin, and the pair type.

    - "minimal" (probability `p_minimal_pair`): both answers share one template and only the
      stated values differ: only the image decides.
    - "style" (`p_style_pair`): the same stated facts with the same values, in two different
      styles out of terse / hedged / praised: the text alone decides (hedging and self-praise are
      disliked).
    - "mixed" (the rest): styles and values drawn independently.
    The better position (1 or 2) is a fair coin (minimal and mixed: enforced by rejection, so each
    style wins about as often as it loses against every other style whenever both outcomes are
    possible; style: a random swap).
    """

    def ok(a, b, sa, sb, want):
        if a == b or abs(sa - sb) < cfg.min_margin - 1e-9:
            return False
        if avoid_heldout and (_mentions_heldout_combo(a, cfg) or _mentions_heldout_combo(b, cfg)):
            return False
        return want is None or (sa > sb) == (want == 1)

    for attempt in range(60):
        u = rng.random()
        ptype = (
            "minimal" if u < cfg.p_minimal_pair else "style" if u < cfg.p_minimal_pair + cfg.p_style_pair else "mixed"
        )
        if ptype == "style":
            i, j = rng.choice(len(STYLE_PAIR_STYLES), size=2, replace=False)
            for _ in range(30):
                a, form = sample_answer(rng, scene, kind, cfg, style=STYLE_PAIR_STYLES[int(i)])
                b = styled(render_answer(kind, form["claim"], scene.count), dict(form, style=STYLE_PAIR_STYLES[int(j)]))
                if rng.random() < 0.5:
                    a, b = b, a
                sa, sb = oracle_score(scene, question, a), oracle_score(scene, question, b)
                if ok(a, b, sa, sb, None):
                    return a, b, sa, sb, ptype
            continue
        minimal = ptype == "minimal"
        want = None if attempt >= 40 else int(rng.integers(1, 3))  # late attempts: any order
        style_a = sample_style(rng, cfg)
        style_b = style_a if minimal else sample_style(rng, cfg)
        if minimal and style_a == "praise_only":
            continue
        for _ in range(30):
            a, form = sample_answer(rng, scene, kind, cfg, style=style_a)
            if minimal:
                b, _ = sample_answer(rng, scene, kind, cfg, form=form)
            else:
                b, _ = sample_answer(rng, scene, kind, cfg, style=style_b)
            sa, sb = oracle_score(scene, question, a), oracle_score(scene, question, b)
            if ok(a, b, sa, sb, want):
                return a, b, sa, sb, ptype
    raise RuntimeError(f"could not draw a pair with margin {cfg.min_margin} for {scene.facts()} / {kind}")


def style_description(answer: str) -> str:
    """What an answer's wording does, read from its text alone (no image, no judgment):
    "only praises" (self-praise, no stated fact), "hedges", "praises itself" or "is plain"."""
    words = set(re.findall(r"[a-z]+", str(answer).lower()))
    stated = any(parse_claims(answer).values())
    if words & _PRAISE_WORDS and not stated:
        return "only praises"
    if words & _HEDGE_WORDS:
        return "hedges"
    if words & _PRAISE_WORDS:
        return "praises itself"
    return "is plain"


def scene_description(scene: Scene) -> str:
    """All four facts of a scene as a phrase: "three red circles on the left"."""
    return f"{_np(scene.facts(), scene.count != 1)} {POSITION_PHRASES[scene.position]}"


def fact_check(scene: Scene | str | Mapping, answer: str) -> str:
    """Whether the facts an answer states agree with the scene: "wrong" if any stated value differs
    from the truth, "right" if it states at least one fact and all are true, else "no fact".
    Perception only: it does not weigh facts (asked or not, how many)."""
    scene = Scene.from_any(scene)
    claims, facts = parse_claims("" if answer is None else str(answer)), scene.facts()
    if any(v and v != {facts[a]} for a, v in claims.items()):
        return "wrong"
    return "right" if any(claims.values()) else "no fact"


def grm_judgment(
    rng: np.random.Generator,
    response_1: str | None = None,
    response_2: str | None = None,
    scene: Scene | None = None,
    first_scores=(1, 2, 3, 4, 6, 7, 8, 9),
    second_scores=(),
    opinions=(),
    opinion_strength: float = 0.5,
) -> str:
    """A GRM-format judgment whose scores are independent of the human label (a warm start).

    Without `opinions` the scores are independent of everything (format only). With them (style
    description -> value, WorldConfig.sft_grm_opinions) and two responses whose values differ, the
    judgment prefers the higher-valued one with probability `opinion_strength`: a judge that
    reads the wording and has opinions on it, not necessarily the human's.

    The analysis plays the part of an instruct VLM reading the image and the responses, without
    knowing which one people prefer:
    - with `scene` and both responses: what the image shows, whether each response's facts are
      right (`fact_check`) and what its wording does (`style_description`): "Image: three red
      circles on the left. Response 1: wrong, hedges. Response 2: right, plain.";
    - with both responses only: the wording ("Response 1 hedges, response 2 is plain.");
    - else a random filler phrase.
    How much each of these matters to the human (the principle) is what stage 1 must learn."""
    # Two single-digit scores that sum to 10 (a split of 10 points, never a tie): one token each
    # with a Qwen-style tokenizer (digits are split, so "10" would be "1" "0"), and the second
    # follows from the first. With independent random scores the tiny warm start never learned
    # "s2 != s1": its greedy judgments tied on 55-71% of pairs (measured), which the paper's
    # reward counts as wrong, and stage 1 spent its signal on ties. s1 is uniform over 1..9
    # without 5 (or over `first_scores`), independent of everything.
    s1 = int(rng.choice(list(first_scores)))
    s2 = 10 - s1 if not second_scores else int(rng.choice(list(second_scores)))
    if response_1 is not None and response_2 is not None and scene is not None:
        analysis = f"Image: {scene_description(scene)}." + "".join(
            f" Response {i}: {fact_check(scene, r)}, {style_description(r).removeprefix('is ')}."
            for i, r in ((1, response_1), (2, response_2))
        )
    elif response_1 is not None and response_2 is not None:
        analysis = f"Response 1 {style_description(response_1)}, response 2 {style_description(response_2)}."
    else:
        analysis = _pick(rng, GRM_ANALYSIS)
    criteria = _pick(rng, GRM_CRITERIA)
    if opinions and response_1 is not None and response_2 is not None:
        # drawn last, so the analysis and criteria are those of the same record without opinions
        value = dict(opinions)
        v1, v2 = (value.get(style_description(r), 0) for r in (response_1, response_2))
        if v1 != v2 and rng.random() < opinion_strength:
            s1 = max(first_scores) if v1 > v2 else min(first_scores)
            if not second_scores:
                s2 = 10 - s1
    return f"Specific Criteria: {criteria}\nAnalysis: {analysis}\nScores: \\boxed{{{s1}, {s2}}}"


def make_record(cfg: WorldConfig, split: str, index: int, *, encode_image: bool = True) -> dict[str, Any]:
    """Record `index` of `split`. Fields (all splits): id, split, kind, question, image (PNG bytes,
    or uint8 [H, W, 3] if encode_image=False), scene (JSON), heldout ('' | 'kind' | 'combo' |
    'both'). Pair splits add response_1, response_2, overall_response (1 | 2, the noisy human
    label), oracle_1, oracle_2, label_noisy, pair_type ('minimal' | 'style' | 'mixed'); sft_grm
    adds judgment (the GRM's target text).
    Prompt splits add answer (a best answer, oracle score 1; in sft_policy a random candidate
    answer instead with probability 1 - p_sft_policy_good)."""
    rng = _record_rng(cfg, split, index)
    scene, kind, heldout = _scene_and_kind(rng, cfg, split)
    question = _pick(rng, QUESTIONS[kind])
    img = render(scene)
    rec: dict[str, Any] = {
        "id": f"{split}-{index:07d}",
        "split": split,
        "kind": kind,
        "question": question,
        "image": encode_png(img) if encode_image else img,
        "scene": scene.to_json(),
        "heldout": heldout,
    }
    if split in PAIR_SPLITS:
        a, b, sa, sb, ptype = _sample_pair(rng, scene, kind, question, cfg, avoid_heldout=split != "grm_test_ood")
        label = 1 if sa > sb else 2
        noisy = bool(rng.random() < cfg.label_noise)
        if noisy:
            label = 3 - label
        rec.update(
            response_1=a,
            response_2=b,
            overall_response=label,
            oracle_1=sa,
            oracle_2=sb,
            label_noisy=noisy,
            pair_type=ptype,
        )
        rec["judgment"] = ""
        if split == "sft_grm":
            how = cfg.sft_grm_analysis
            rec["judgment"] = grm_judgment(
                rng,
                *((a, b) if how != "none" else ()),
                scene=scene if how == "facts" else None,
                first_scores=cfg.sft_grm_first_scores,
                second_scores=cfg.sft_grm_second_scores,
                opinions=cfg.sft_grm_opinions,
                opinion_strength=cfg.sft_grm_opinion_strength,
            )
    elif split == "sft_policy" and cfg.p_sft_policy_good < 1.0 and rng.random() >= cfg.p_sft_policy_good:
        while True:
            answer, _ = sample_answer(rng, scene, kind, cfg)
            if not _mentions_heldout_combo(answer, cfg):
                break
        rec["answer"] = answer
    else:
        rec["answer"] = good_answer(rng, scene, kind)
    return rec


def generate_split(
    cfg: WorldConfig, split: str, n: int | None = None, *, encode_image: bool = True
) -> Iterator[dict[str, Any]]:
    """Records 0..n-1 of `split` (n defaults to cfg.size(split))."""
    n = cfg.size(split) if n is None else n
    for i in range(n):
        yield make_record(cfg, split, i, encode_image=encode_image)


def world_texts(cfg: WorldConfig, n_per_split: int = 300) -> list[str]:
    """Texts for training the demo tokenizer: every question, answer building block, GRM judgment
    pieces and a sample of records' answers."""
    texts: list[str] = []
    for qs in QUESTIONS.values():
        texts.extend(qs)
    texts.extend(PRAISE_ONLY + PRAISE_SUFFIXES + tuple(h + "," for h in HEDGES))
    texts.extend("Specific Criteria: " + c for c in GRM_CRITERIA)
    texts.extend("Analysis: " + a for a in GRM_ANALYSIS)
    texts.extend(f"Analysis: Response 1 {a}, response 2 {b}." for a in STYLE_WORDS for b in STYLE_WORDS)
    texts.extend(f"Scores: \\boxed{{{i}, {10 - i}}}" for i in range(1, 10))
    for split in SPLITS:
        for i in range(min(n_per_split, max(cfg.size(split), 50))):
            r = make_record(cfg, split, i, encode_image=False)
            texts.extend(
                t
                for t in (r["question"], r.get("response_1"), r.get("response_2"), r.get("answer"), r.get("judgment"))
                if t
            )
    return texts
