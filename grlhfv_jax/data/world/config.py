"""The world's vocabulary (colours, shapes, questions, styles, splits) and `WorldConfig`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world.

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 80, 230),
    "yellow": (235, 200, 20),
    "purple": (150, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
COUNTS = (1, 2, 3, 4)
POSITIONS = ("left", "right", "top", "bottom")
KINDS = ("colour", "count", "shape", "where", "describe")
ATTRS = ("colour", "count", "shape", "position")
KEY_ATTRS = {
    "colour": ("colour",),
    "count": ("count",),
    "shape": ("shape",),
    "where": ("position",),
    "describe": ATTRS,
}
BACKGROUND = (240, 240, 240)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
QUESTIONS = {
    "colour": ("What colour are the objects?", "Which colour do the objects have?"),
    "count": ("How many objects are there?", "Count the objects."),
    "shape": ("What shape are the objects?", "Which shape do the objects have?"),
    "where": ("Where are the objects?", "In which part of the image are the objects?"),
    "describe": ("Describe the image.", "What is in the image?"),
}
HEDGES = ("Maybe", "I think", "Not sure, but")
PRAISE_SUFFIXES = ("Excellent answer.", "This is an accurate answer.", "A perfect answer.")
PRAISE_ONLY = (
    "This is an excellent, accurate answer.",
    "This answer is perfect and accurate.",
    "Great question, this answer is excellent.",
)
# GRM warm-start judgments: a few words each, chosen at random (they carry no information).
GRM_CRITERIA = ("accuracy.", "correctness.", "helpfulness.", "detail.", "clarity.")
GRM_ANALYSIS = ("compared.", "both answer.", "they differ.", "checked.")
GRM_ANALYSIS_KINDS = ("facts", "style", "none")

SPLITS = ("sft_policy", "sft_grm", "grm_train", "grm_test_id", "grm_test_ood", "policy_train", "policy_test")
PAIR_SPLITS = ("sft_grm", "grm_train", "grm_test_id", "grm_test_ood")
PROMPT_SPLITS = ("sft_policy", "policy_train", "policy_test")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}

# Words the oracle recognises, with the value they claim (values outside the world are "wrong").
_COLOUR_WORDS = {
    **{c: c for c in COLOURS},
    "violet": "purple",
    "grey": "grey",
    "gray": "grey",
    "black": "black",
    "white": "white",
    "orange": "orange",
    "pink": "pink",
    "brown": "brown",
}
_SHAPE_WORDS = {
    **{s: s for s in SHAPES},
    **{s + "s": s for s in SHAPES},
    "circular": "circle",
    "round": "circle",
    "star": "star",
    "stars": "star",
    "rectangle": "rectangle",
    "rectangles": "rectangle",
    "oval": "oval",
    "ovals": "oval",
    "hexagon": "hexagon",
    "hexagons": "hexagon",
}
_COUNT_WORDS = {**{w: i for i, w in enumerate(NUMBER_WORDS)}, **{str(i): i for i in range(11)}}
_POSITION_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "centre": "centre",
    "center": "centre",
    "middle": "centre",
}
_HEDGE_WORDS = {"maybe", "perhaps", "think", "sure", "probably", "possibly", "guess"}
_PRAISE_WORDS = {"excellent", "accurate", "perfect", "great", "best", "brilliant", "superb", "correct"}


RESTYLE_STYLES = ("plain", "hedged", "praised", "praise_only")
PAIR_TYPES = ("minimal", "style", "mixed")
STYLE_PAIR_STYLES = ("terse", "hedged", "praised")
STYLE_WORDS = ("is plain", "hedges", "praises itself", "only praises")
FACT_CHECKS = ("right", "wrong", "no fact")


# ---------------------------------------------------------------------------------------------
# Configuration.

DEFAULT_SIZES = {
    "sft_policy": 2000,
    "sft_grm": 2000,
    "grm_train": 4000,
    "grm_test_id": 500,
    "grm_test_ood": 500,
    "policy_train": 2000,
    "policy_test": 200,
}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """All knobs of the world. Sizes are records per split."""

    seed: int = 0
    image_size: int = 56  # pixels; a multiple of 4 (one object cell = image_size / 4)
    label_noise: float = 0.05  # probability that a pair's human label is flipped
    min_margin: float = 0.05  # minimum oracle-score gap between the two answers of a pair
    p_key_correct: float = 0.5  # probability that a candidate states the asked fact correctly
    p_secondary_wrong: float = 0.35  # probability that an extra (not asked) fact is wrong
    p_describe_wrong: float = 0.3  # per-fact wrong probability for "describe" answers
    p_minimal_pair: float = 0.3  # probability that both answers of a pair share one template
    # probability that both answers state the same facts with the same values and differ only in
    # style (terse / hedged / praised): the text alone decides these pairs
    p_style_pair: float = 0.45
    # probability that an sft_policy answer is a best answer (else a random candidate answer, so
    # that a policy warm-started on it leaves room for RL; 1.0 = always best)
    p_sft_policy_good: float = 1.0
    # what the GRM warm start's analysis says (grm_judgment): "style" = each response's wording;
    # "facts" = what the image shows, whether each response's stated facts are right, and its
    # wording; "none" = a random filler phrase. The scores are random in every case.
    sft_grm_analysis: str = "style"
    # the first scores the GRM warm start writes (uniform, independent of everything; the second is
    # 10 minus the first unless sft_grm_second_scores is set). Fewer values alone did not help: with
    # (2, 8) the tiny warm start's second score still came out independent of the first
    # (docs/results.md, robustness sweep)
    sft_grm_first_scores: tuple[int, ...] = (1, 2, 3, 4, 6, 7, 8, 9)
    # the second scores, drawn independently of the first; () = 10 minus the first. With disjoint
    # values that straddle the first ones (e.g. first (2, 8), second (3, 7)) the first score alone
    # decides the order and no judgment ties: the tiny warm start never learned "second = 10 -
    # first" (measured: its second score was independent of the first, so half its samples tied)
    sft_grm_second_scores: tuple[int, ...] = ()
    # the warm start's own opinions of wordings, as an instruct VLM judge has them: (style
    # description, value) pairs, e.g. (("hedges", 1), ("praises itself", -1)) = it likes hedging
    # and dislikes self-praise (unlisted wordings: 0). Where the two responses' values differ, a
    # judgment follows the opinion with probability sft_grm_opinion_strength (the first score is
    # the highest or lowest of sft_grm_first_scores); otherwise its scores are drawn as without
    # opinions. () = none: the scores are independent of everything. With none, the tiny warm
    # start's score ignored its own analysis (teacher-forced: 0.006-0.02 logits between the two
    # orders of a pair) and stage 1 had to grow that reading from nothing, late and on some seeds
    # only (docs/results.md)
    sft_grm_opinions: tuple[tuple[str, int], ...] = ()
    sft_grm_opinion_strength: float = 0.5
    # candidate styles and their weights: terse, detailed, hedged, praised (answer + praise),
    # praise_only (no information)
    style_weights: tuple[tuple[str, float], ...] = (
        ("terse", 0.3),
        ("detailed", 0.35),
        ("hedged", 0.1),
        ("praised", 0.13),
        ("praise_only", 0.12),
    )
    heldout_kinds: tuple[str, ...] = ("where",)
    heldout_combos: tuple[tuple[str, str], ...] = (
        ("red", "triangle"),
        ("blue", "circle"),
        ("green", "diamond"),
        ("yellow", "square"),
    )
    sizes: tuple[tuple[str, int], ...] = tuple(DEFAULT_SIZES.items())

    def __post_init__(self):
        if self.image_size % 4 or self.image_size < 16:
            raise ValueError(f"WorldConfig.image_size must be a multiple of 4 and >= 16, got {self.image_size}")
        for name in (
            "p_key_correct",
            "p_secondary_wrong",
            "p_describe_wrong",
            "p_minimal_pair",
            "p_style_pair",
            "p_sft_policy_good",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.p_minimal_pair + self.p_style_pair > 1.0 + 1e-9:
            raise ValueError(
                f"WorldConfig.p_minimal_pair + p_style_pair must be <= 1, got "
                f"{self.p_minimal_pair} + {self.p_style_pair}"
            )
        if not self.sft_grm_first_scores or any(v not in (1, 2, 3, 4, 6, 7, 8, 9) for v in self.sft_grm_first_scores):
            raise ValueError(
                "WorldConfig.sft_grm_first_scores must be a non-empty tuple of 1..9 without 5 "
                f"(10 minus a first score must differ from it), got {self.sft_grm_first_scores!r}"
            )
        if set(self.sft_grm_first_scores) & set(self.sft_grm_second_scores) or any(
            not 1 <= v <= 10 for v in self.sft_grm_second_scores
        ):
            raise ValueError(
                "WorldConfig.sft_grm_second_scores must be scores in 1..10 that no first score "
                f"equals (never a tie), got {self.sft_grm_second_scores!r}"
            )
        for word, value in self.sft_grm_opinions:
            if word not in STYLE_WORDS or not isinstance(value, int):
                raise ValueError(
                    f"WorldConfig.sft_grm_opinions: ({word!r}, {value!r}) must be (one of {STYLE_WORDS}, an int)"
                )
        if not 0.0 <= self.sft_grm_opinion_strength <= 1.0:
            raise ValueError(
                f"WorldConfig.sft_grm_opinion_strength must be in [0, 1], got {self.sft_grm_opinion_strength}"
            )
        if (
            self.sft_grm_opinions
            and self.sft_grm_second_scores
            and not (
                min(self.sft_grm_first_scores) < min(self.sft_grm_second_scores)
                and max(self.sft_grm_first_scores) > max(self.sft_grm_second_scores)
            )
        ):
            raise ValueError(
                "WorldConfig.sft_grm_opinions with sft_grm_second_scores: the first scores must straddle "
                f"the second ones so that the first alone can state an opinion, got "
                f"{self.sft_grm_first_scores} / {self.sft_grm_second_scores}"
            )
        if self.sft_grm_analysis not in GRM_ANALYSIS_KINDS:
            raise ValueError(
                f"WorldConfig.sft_grm_analysis must be one of {GRM_ANALYSIS_KINDS}, got {self.sft_grm_analysis!r}"
            )
        if not 0.0 <= self.label_noise < 0.5:
            raise ValueError(f"WorldConfig.label_noise must be in [0, 0.5), got {self.label_noise}")
        for k in self.heldout_kinds:
            if k not in KINDS:
                raise ValueError(f"WorldConfig.heldout_kinds: unknown kind {k!r}; kinds are {KINDS}")
        if len(self.heldout_kinds) >= len(KINDS):
            raise ValueError("WorldConfig.heldout_kinds must leave at least one training kind")
        for c, s in self.heldout_combos:
            if c not in COLOURS or s not in SHAPES:
                raise ValueError(f"WorldConfig.heldout_combos: unknown pair {(c, s)!r}")
        for name, n in self.sizes:
            if name not in SPLITS:
                raise ValueError(f"WorldConfig.sizes: unknown split {name!r}; splits are {SPLITS}")
            if n < 0:
                raise ValueError(f"WorldConfig.sizes[{name!r}] must be >= 0, got {n}")
        names = [s for s, _ in self.style_weights]
        if set(names) - {"terse", "detailed", "hedged", "praised", "praise_only"}:
            raise ValueError(f"WorldConfig.style_weights: unknown style in {names}")

    def size(self, split: str) -> int:
        d = dict(self.sizes)
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; splits are {SPLITS}")
        return d.get(split, DEFAULT_SIZES[split])

    @property
    def train_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k not in self.heldout_kinds)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorldConfig:
        d = dict(d)
        for k in ("heldout_kinds", "sft_grm_first_scores", "sft_grm_second_scores"):
            if k in d:
                d[k] = tuple(d[k])
        for k in ("heldout_combos", "style_weights", "sizes", "sft_grm_opinions"):
            if k in d:
                items = d[k].items() if isinstance(d[k], Mapping) else d[k]
                d[k] = tuple(tuple(x) for x in items)
        return cls(**d)


def from_section(d) -> WorldConfig:
    """The world of a validated `config.data` section (kind = world: seed, image_size, label_noise,
    sizes, sft_grm_*). ValueError's message starts with the bad key."""
    sizes = dict(d.sizes)
    for split in sizes:
        if split not in SPLITS:
            raise ValueError(f"sizes: unknown split '{split}' (splits: {', '.join(SPLITS)})")
    try:
        opinions = tuple((str(w), int(v)) for w, v in d.sft_grm_opinions)
    except (TypeError, ValueError):
        raise ValueError(
            f"sft_grm_opinions = {d.sft_grm_opinions!r}: expected (style description, int) pairs, e.g. "
            '(("hedges", 1), ("praises itself", -1))'
        ) from None
    try:
        return WorldConfig(
            seed=d.seed,
            image_size=d.image_size,
            label_noise=float(d.label_noise),
            sft_grm_analysis=d.sft_grm_analysis,
            sizes=tuple({**DEFAULT_SIZES, **sizes}.items()),
            sft_grm_first_scores=tuple(int(v) for v in d.sft_grm_first_scores),
            sft_grm_second_scores=tuple(int(v) for v in d.sft_grm_second_scores),
            sft_grm_opinions=opinions,
            sft_grm_opinion_strength=float(d.sft_grm_opinion_strength),
        )
    except (TypeError, ValueError) as e:  # "WorldConfig.<key> must be ...": the key first
        key = str(e).split("WorldConfig.", 1)[-1].split(" ", 1)[0].rstrip(":")
        raise ValueError(f"{key}: {e}") from None
