"""A synthetic multimodal preference world with a hidden "human" principle.

Everything here is pure numpy + PIL and fully determined by `WorldConfig.seed`: record `i` of split
`s` is drawn from its own generator `default_rng([seed, split_id(s), i])`, so any record can be
regenerated alone, in any order.

The world
- A scene is `count` (1..4) identical solid objects of one `shape` and one `colour`, standing in
  a line along one side of the image (`position`: left / right / top / bottom), on a plain
  light-grey background. Cells are size / 4 px (one 14-px patch at the default 56 px); each object
  spans 0.76 cell and the objects are one cell apart.
- Questions ask for the colour, the count, the shape, the place, or a description.
- Candidate answers (<= 12 words, closed vocabulary) state some of the four facts, each right or
  wrong, tersely or in detail, sometimes hedged ("Maybe ..."), sometimes with self-praise
  ("Excellent answer."), or only self-praise ("This is an excellent, accurate answer.").

The hidden principle (`oracle_score`, the single source of truth; `preference` compares two):

    score = 0.2 + 0.65 * key_credit + 0.15 * [colour named correctly]
            - 0.15 * (#wrong facts that were not asked) - 0.1 * [hedging] - 0.05 * [self-praise]
            - verbosity (0.02 per word beyond 16, at most 0.2),   clipped to [0, 1]

`key_credit` is the mean over the asked facts (all four for "describe") of 1 (stated and right),
0.25 (not stated) or 0 (wrong: any stated value differs from the truth). The human label is the
answer with the higher score, flipped with probability `label_noise`. Pairs are drawn so that the
two scores differ by at least `min_margin`, and so that the text alone says little about which
answer wins (measured in `text_only_baselines`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw

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
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom"}
QUESTIONS = {
    "colour": ("What colour are the objects?", "Which colour do the objects have?"),
    "count": ("How many objects are there?", "Count the objects."),
    "shape": ("What shape are the objects?", "Which shape do the objects have?"),
    "where": ("Where are the objects?", "In which part of the image are the objects?"),
    "describe": ("Describe the image.", "What is in the image?"),
}
HEDGES = ("Maybe", "I think", "Not sure, but")
PRAISE_SUFFIXES = ("Excellent answer.", "This is an accurate answer.", "A perfect answer.")
PRAISE_ONLY = ("This is an excellent, accurate answer.", "This answer is perfect and accurate.",
               "Great question, this answer is excellent.")
# GRM warm-start judgments: a few words each, chosen at random (they carry no information).
GRM_CRITERIA = ("accuracy.", "correctness.", "helpfulness.", "detail.", "clarity.")
GRM_ANALYSIS = ("compared.", "both answer.", "they differ.", "checked.")
GRM_ANALYSIS_KINDS = ("facts", "style", "none")

SPLITS = ("sft_policy", "sft_grm", "grm_train", "grm_test_id", "grm_test_ood", "policy_train",
          "policy_test")
PAIR_SPLITS = ("sft_grm", "grm_train", "grm_test_id", "grm_test_ood")
PROMPT_SPLITS = ("sft_policy", "policy_train", "policy_test")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}

# Words the oracle recognises, with the value they claim (values outside the world are "wrong").
_COLOUR_WORDS = {**{c: c for c in COLOURS}, "violet": "purple", "grey": "grey", "gray": "grey",
                 "black": "black", "white": "white", "orange": "orange", "pink": "pink",
                 "brown": "brown"}
_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}, "circular": "circle",
                "round": "circle", "star": "star", "stars": "star", "rectangle": "rectangle",
                "rectangles": "rectangle", "oval": "oval", "ovals": "oval", "hexagon": "hexagon",
                "hexagons": "hexagon"}
_COUNT_WORDS = {**{w: i for i, w in enumerate(NUMBER_WORDS)}, **{str(i): i for i in range(11)}}
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
                   "centre": "centre", "center": "centre", "middle": "centre"}
_HEDGE_WORDS = {"maybe", "perhaps", "think", "sure", "probably", "possibly", "guess"}
_PRAISE_WORDS = {"excellent", "accurate", "perfect", "great", "best", "brilliant", "superb",
                 "correct"}


# ---------------------------------------------------------------------------------------------
# Configuration.

DEFAULT_SIZES = {"sft_policy": 2000, "sft_grm": 2000, "grm_train": 4000, "grm_test_id": 500,
                 "grm_test_ood": 500, "policy_train": 2000, "policy_test": 200}


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """All knobs of the world. Sizes are records per split."""

    seed: int = 0
    image_size: int = 56  # pixels; a multiple of 4 (one object cell = image_size / 4)
    label_noise: float = 0.05  # probability that a pair's human label is flipped
    min_margin: float = 0.05 # minimum oracle-score gap between the two answers of a pair
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
        ("terse", 0.3), ("detailed", 0.35), ("hedged", 0.1), ("praised", 0.13), ("praise_only", 0.12))
    heldout_kinds: tuple[str, ...] = ("where",)
    heldout_combos: tuple[tuple[str, str], ...] = (
        ("red", "triangle"), ("blue", "circle"), ("green", "diamond"), ("yellow", "square"))
    sizes: tuple[tuple[str, int], ...] = tuple(DEFAULT_SIZES.items())

    def __post_init__(self):
        if self.image_size % 4 or self.image_size < 16:
            raise ValueError(f"WorldConfig.image_size must be a multiple of 4 and >= 16, got {self.image_size}")
        for name in ("p_key_correct", "p_secondary_wrong", "p_describe_wrong", "p_minimal_pair",
                     "p_style_pair", "p_sft_policy_good"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.p_minimal_pair + self.p_style_pair > 1.0 + 1e-9:
            raise ValueError(f"WorldConfig.p_minimal_pair + p_style_pair must be <= 1, got "
                             f"{self.p_minimal_pair} + {self.p_style_pair}")
        if not self.sft_grm_first_scores or any(v not in (1, 2, 3, 4, 6, 7, 8, 9) for v in self.sft_grm_first_scores):
            raise ValueError("WorldConfig.sft_grm_first_scores must be a non-empty tuple of 1..9 without 5 "
                             f"(10 minus a first score must differ from it), got {self.sft_grm_first_scores!r}")
        if set(self.sft_grm_first_scores) & set(self.sft_grm_second_scores) or any(
                not 1 <= v <= 10 for v in self.sft_grm_second_scores):
            raise ValueError("WorldConfig.sft_grm_second_scores must be scores in 1..10 that no first score "
                             f"equals (never a tie), got {self.sft_grm_second_scores!r}")
        for word, value in self.sft_grm_opinions:
            if word not in STYLE_WORDS or not isinstance(value, int):
                raise ValueError(f"WorldConfig.sft_grm_opinions: ({word!r}, {value!r}) must be (one of {STYLE_WORDS}, "
                                 "an int)")
        if not 0.0 <= self.sft_grm_opinion_strength <= 1.0:
            raise ValueError(f"WorldConfig.sft_grm_opinion_strength must be in [0, 1], got "
                             f"{self.sft_grm_opinion_strength}")
        if self.sft_grm_opinions and self.sft_grm_second_scores and not (
                min(self.sft_grm_first_scores) < min(self.sft_grm_second_scores)
                and max(self.sft_grm_first_scores) > max(self.sft_grm_second_scores)):
            raise ValueError("WorldConfig.sft_grm_opinions with sft_grm_second_scores: the first scores must straddle "
                             f"the second ones so that the first alone can state an opinion, got "
                             f"{self.sft_grm_first_scores} / {self.sft_grm_second_scores}")
        if self.sft_grm_analysis not in GRM_ANALYSIS_KINDS:
            raise ValueError(f"WorldConfig.sft_grm_analysis must be one of {GRM_ANALYSIS_KINDS}, "
                             f"got {self.sft_grm_analysis!r}")
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
    def from_dict(cls, d: Mapping[str, Any]) -> "WorldConfig":
        d = dict(d)
        for k in ("heldout_kinds", "sft_grm_first_scores", "sft_grm_second_scores"):
            if k in d:
                d[k] = tuple(d[k])
        for k in ("heldout_combos", "style_weights", "sizes", "sft_grm_opinions"):
            if k in d:
                items = d[k].items() if isinstance(d[k], Mapping) else d[k]
                d[k] = tuple(tuple(x) for x in items)
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# Scenes and images.

@dataclasses.dataclass(frozen=True)
class Scene:
    """`count` objects of one `shape` and `colour` along one side (`position`) of the image.

    `centres` are the objects' (x, y) pixel centres; each object spans 0.76 cell (cell = size / 4).
    """

    shape: str
    colour: str
    count: int
    position: str
    centres: tuple[tuple[int, int], ...]
    image_size: int = 56

    def facts(self) -> dict[str, Any]:
        return {"colour": self.colour, "count": self.count, "shape": self.shape,
                "position": self.position}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_any(cls, s: "Scene | str | bytes | Mapping[str, Any]") -> "Scene":
        """A Scene from a Scene, its JSON text, or its dict. Raises ValueError naming the problem."""
        if isinstance(s, Scene):
            return s
        if isinstance(s, bytes):
            s = s.decode("utf-8", errors="replace")
        if isinstance(s, str):
            try:
                s = json.loads(s)
            except json.JSONDecodeError as e:
                raise ValueError(f"scene: not valid JSON ({e}): {s[:80]!r}") from None
        if not isinstance(s, Mapping):
            raise ValueError(f"scene: expected a dict or JSON object, got {type(s).__name__}")
        for k in ("shape", "colour", "count", "position", "centres"):
            if k not in s:
                raise ValueError(f"scene: missing field {k!r}")
        try:
            scene = cls(shape=str(s["shape"]), colour=str(s["colour"]), count=int(s["count"]),
                        position=str(s["position"]),
                        centres=tuple((int(c[0]), int(c[1])) for c in s["centres"]),
                        image_size=int(s.get("image_size", 56)))
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"scene: malformed field ({type(e).__name__}: {e})") from None
        if scene.shape not in SHAPES or scene.colour not in COLOURS or scene.position not in POSITIONS:
            raise ValueError(f"scene: unknown shape/colour/position in {scene.facts()}")
        if scene.count not in COUNTS or len(scene.centres) != scene.count:
            raise ValueError(f"scene: count {scene.count} does not match centres {scene.centres}")
        return scene


def sample_scene(rng: np.random.Generator, cfg: WorldConfig, *, combos: list[tuple[str, str]] | None = None) -> Scene:
    """A random scene; `combos` restricts the (colour, shape) pair (default: any).

    The objects stand in a line along the side named by `position`, centred on it, one cell apart
    (the line shifts by +-1 px along itself, each object by +-1 px across), so that the side is
    unambiguous: e.g. "left" objects are in the leftmost column of cells and never all in the top
    or bottom half."""
    if combos is None:
        combos = [(c, s) for c in COLOURS for s in SHAPES]
    colour, shape = combos[int(rng.integers(len(combos)))]
    count = int(rng.choice(COUNTS))
    position = str(rng.choice(POSITIONS))
    size = cfg.image_size
    cell = size / 4
    jit = max(1, size // 56)
    across = cell / 2 if position in ("left", "top") else size - cell / 2
    shift = int(rng.integers(-jit, jit + 1))  # the whole line moves along its axis; spacing stays one cell
    centres = []
    for k in range(count):
        along = int(round(size / 2 + (k - (count - 1) / 2) * cell)) + shift
        off = int(round(across)) + int(rng.integers(-jit, jit + 1))
        centres.append((off, along) if position in ("left", "right") else (along, off))
    return Scene(shape=shape, colour=colour, count=count, position=position, centres=tuple(centres),
                 image_size=size)


OBJECT_RADIUS = 0.38  # in cells


def render(scene: Scene) -> np.ndarray:
    """The scene's image, uint8 [size, size, 3]. Solid shapes, no anti-aliasing."""
    size = scene.image_size
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    rad = OBJECT_RADIUS * size / 4
    fill = COLOURS[scene.colour]
    for cx, cy in scene.centres:
        if scene.shape == "circle":
            draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill)
        elif scene.shape == "square":
            h = 0.85 * rad
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif scene.shape == "triangle":
            draw.polygon([(cx, cy - rad), (cx - rad, cy + rad), (cx + rad, cy + rad)], fill=fill)
        elif scene.shape == "diamond":
            draw.polygon([(cx, cy - rad), (cx + rad, cy), (cx, cy + rad), (cx - rad, cy)], fill=fill)
        else:
            raise ValueError(f"unknown shape {scene.shape!r}")
    return np.asarray(img, dtype=np.uint8)


ATTR_VALUES: dict[str, tuple] = {"colour": tuple(COLOURS), "count": COUNTS, "shape": SHAPES,
                                  "position": POSITIONS}


def attribute_labels(scene: Scene) -> np.ndarray:
    """int [4]: the index of the scene's colour, count, shape and position in `ATTR_VALUES`
    (in `ATTRS` order)."""
    f = scene.facts()
    return np.array([ATTR_VALUES[a].index(f[a]) for a in ATTRS], np.int32)


def vision_examples(cfg: WorldConfig, stream: int, index: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`n` rendered scenes and their attribute labels [n, 4], for pretraining a vision tower.

    Deterministic in (cfg.seed, stream, index); the held-out colour-shape combinations of the
    out-of-distribution split are never drawn, so that split stays unseen by every model."""
    rng = np.random.default_rng([cfg.seed, 1000 + int(stream), int(index)])
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in set(cfg.heldout_combos)]
    scenes = [sample_scene(rng, cfg, combos=combos) for _ in range(n)]
    return [render(s) for s in scenes], np.stack([attribute_labels(s) for s in scenes])


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes, *, where: str = "image") -> np.ndarray:
    """PNG (or any PIL-readable) bytes -> uint8 [H, W, 3]; ValueError naming `where` if corrupt."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{where}: expected encoded image bytes, got {type(data).__name__}")
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"{where}: corrupt or unreadable image ({type(e).__name__}: {e})") from None


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
    values = {"colour": list(COLOURS), "count": list(COUNTS), "shape": list(SHAPES),
              "position": list(POSITIONS)}[attr]
    others = [v for v in values if v != truth]
    return others[int(rng.integers(len(others)))]


def sample_claim(rng: np.random.Generator, scene: Scene, kind: str, cfg: WorldConfig,
                 *, detailed: bool, attrs: tuple[str, ...] | None = None) -> dict[str, Any]:
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


def sample_answer(rng: np.random.Generator, scene: Scene, kind: str, cfg: WorldConfig,
                  style: str | None = None, form: Mapping[str, Any] | None = None
                  ) -> tuple[str, dict[str, Any]]:
    """A candidate answer and its form (style, stated attributes, hedge / praise phrase).

    Passing the `form` of another answer gives the same template with freshly drawn values."""
    if form is None:
        style = sample_style(rng, cfg) if style is None else style
        detailed = style == "detailed" or (style in ("hedged", "praised") and rng.random() < 0.5)
        form = {"style": style, "detailed": detailed, "attrs": None,
                "hedge": _pick(rng, HEDGES), "praise": _pick(rng, PRAISE_SUFFIXES),
                "praise_only": _pick(rng, PRAISE_ONLY)}
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


RESTYLE_STYLES = ("plain", "hedged", "praised", "praise_only")


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
    score = (0.2 + 0.65 * key_credit + 0.15 * colour_ok - 0.15 * secondary_wrong - 0.1 * hedge
             - 0.05 * praise - verbosity)
    score = float(np.clip(round(score, 6), 0.0, 1.0))
    return {"score": score, "kind": kind, "status": status, "key_credit": key_credit,
            "secondary_wrong": secondary_wrong, "colour_ok": colour_ok, "hedge": hedge,
            "praise": praise, "n_words": n_words}


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


PAIR_TYPES = ("minimal", "style", "mixed")
STYLE_PAIR_STYLES = ("terse", "hedged", "praised")


def _sample_pair(rng: np.random.Generator, scene: Scene, kind: str, question: str, cfg: WorldConfig,
                 avoid_heldout: bool) -> tuple[str, str, float, float, str]:
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
        ptype = "minimal" if u < cfg.p_minimal_pair else "style" if u < cfg.p_minimal_pair + cfg.p_style_pair \
            else "mixed"
        if ptype == "style":
            i, j = rng.choice(len(STYLE_PAIR_STYLES), size=2, replace=False)
            for _ in range(30):
                a, form = sample_answer(rng, scene, kind, cfg, style=STYLE_PAIR_STYLES[int(i)])
                b = styled(render_answer(kind, form["claim"], scene.count),
                           dict(form, style=STYLE_PAIR_STYLES[int(j)]))
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


STYLE_WORDS = ("is plain", "hedges", "praises itself", "only praises")


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


FACT_CHECKS = ("right", "wrong", "no fact")


def fact_check(scene: Scene | str | Mapping, answer: str) -> str:
    """Whether the facts an answer states agree with the scene: "wrong" if any stated value differs
    from the truth, "right" if it states at least one fact and all are true, else "no fact".
    Perception only: it does not weigh facts (asked or not, how many)."""
    scene = Scene.from_any(scene)
    claims, facts = parse_claims("" if answer is None else str(answer)), scene.facts()
    if any(v and v != {facts[a]} for a, v in claims.items()):
        return "wrong"
    return "right" if any(claims.values()) else "no fact"


def grm_judgment(rng: np.random.Generator, response_1: str | None = None, response_2: str | None = None,
                 scene: Scene | None = None, first_scores=(1, 2, 3, 4, 6, 7, 8, 9), second_scores=(),
                 opinions=(), opinion_strength: float = 0.5) -> str:
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
            for i, r in ((1, response_1), (2, response_2)))
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
        "id": f"{split}-{index:07d}", "split": split, "kind": kind, "question": question,
        "image": encode_png(img) if encode_image else img, "scene": scene.to_json(),
        "heldout": heldout,
    }
    if split in PAIR_SPLITS:
        a, b, sa, sb, ptype = _sample_pair(rng, scene, kind, question, cfg, avoid_heldout=split != "grm_test_ood")
        label = 1 if sa > sb else 2
        noisy = bool(rng.random() < cfg.label_noise)
        if noisy:
            label = 3 - label
        rec.update(response_1=a, response_2=b, overall_response=label, oracle_1=sa, oracle_2=sb,
                   label_noisy=noisy, pair_type=ptype)
        rec["judgment"] = ""
        if split == "sft_grm":
            how = cfg.sft_grm_analysis
            rec["judgment"] = grm_judgment(rng, *((a, b) if how != "none" else ()),
                                           scene=scene if how == "facts" else None,
                                           first_scores=cfg.sft_grm_first_scores,
                                           second_scores=cfg.sft_grm_second_scores,
                                           opinions=cfg.sft_grm_opinions,
                                           opinion_strength=cfg.sft_grm_opinion_strength)
    elif split == "sft_policy" and cfg.p_sft_policy_good < 1.0 and rng.random() >= cfg.p_sft_policy_good:
        while True:
            answer, _ = sample_answer(rng, scene, kind, cfg)
            if not _mentions_heldout_combo(answer, cfg):
                break
        rec["answer"] = answer
    else:
        rec["answer"] = good_answer(rng, scene, kind)
    return rec


def generate_split(cfg: WorldConfig, split: str, n: int | None = None, *, encode_image: bool = True
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
            texts.extend(t for t in (r["question"], r.get("response_1"), r.get("response_2"),
                                     r.get("answer"), r.get("judgment")) if t)
    return texts


# ---------------------------------------------------------------------------------------------
# Text-only baselines (how much a judge that cannot see the image can get right).

def _text_features(text: str, vocab: Mapping[str, int]) -> np.ndarray:
    v = np.zeros(len(vocab) + 1, np.float64)
    for w in re.findall(r"[a-z]+|\d+", text.lower()):
        if w in vocab:
            v[vocab[w]] += 1.0
    v[-1] = len(text.split()) / 10.0
    return v


def text_only_baselines(train: list[Mapping[str, Any]], test: list[Mapping[str, Any]],
                        steps: int = 150, lr: float = 1.0) -> dict[str, float]:
    """Accuracy on `test` against the human label of three judges that never see the image:
    `longer` (the longer answer wins), `shorter`, and `bow_logreg` (logistic regression on
    bag-of-words + length differences, fitted on `train`, both orders)."""
    vocab: dict[str, int] = {}
    for r in train:
        for t in (r["response_1"], r["response_2"], r["question"]):
            for w in re.findall(r"[a-z]+|\d+", t.lower()):
                vocab.setdefault(w, len(vocab))

    def xy(rows):
        x, y = [], []
        for r in rows:
            d = _text_features(r["response_1"], vocab) - _text_features(r["response_2"], vocab)
            q = np.zeros(len(KINDS))
            q[KINDS.index(kind_of_question(r["question"]))] = 1.0
            # the question kind interacts with the answer words: outer product keeps it linear
            x.append(np.concatenate([d, np.outer(q, d).ravel()]))
            y.append(1.0 if int(r["overall_response"]) == 1 else 0.0)
        return np.array(x, np.float32), np.array(y, np.float32)

    xtr, ytr = xy(train)
    xtr, ytr = np.concatenate([xtr, -xtr]), np.concatenate([ytr, 1 - ytr])  # both orders
    w = np.zeros(xtr.shape[1], np.float32)
    for _ in range(steps):  # full-batch gradient descent with a little L2
        p = 1 / (1 + np.exp(-xtr @ w))
        w -= lr * (xtr.T @ (p - ytr) / len(ytr) + 1e-3 * w)
    xte, yte = xy(test)
    acc_lr = float(np.mean(((xte @ w) > 0) == (yte > 0.5)))
    n1 = np.array([len(r["response_1"].split()) for r in test])
    n2 = np.array([len(r["response_2"].split()) for r in test])
    lab = np.array([int(r["overall_response"]) for r in test])
    longer = np.where(n1 > n2, 1, np.where(n2 > n1, 2, 0))
    # ties in length count as half right
    acc_longer = float(np.mean(np.where(longer == 0, 0.5, longer == lab)))
    acc_shorter = float(np.mean(np.where(longer == 0, 0.5, (3 - longer) == lab)))
    return {"longer": acc_longer, "shorter": acc_shorter, "bow_logreg": acc_lr}


def world_stats(cfg: WorldConfig, n_train: int = 4000, n_test: int = 1000) -> dict[str, Any]:
    """Figures of the world (docs/data.md): label balance and noise, answer lengths, mean oracle
    score per answer style, and the text-only baselines on the in- and out-of-distribution tests."""
    train = [make_record(cfg, "grm_train", i, encode_image=False) for i in range(n_train)]
    tid = [make_record(cfg, "grm_test_id", i, encode_image=False) for i in range(n_test)]
    tood = [make_record(cfg, "grm_test_ood", i, encode_image=False) for i in range(n_test)]
    rng = np.random.default_rng(cfg.seed)
    by_style: dict[str, list[float]] = {}
    for r in tid:
        sc = Scene.from_any(r["scene"])
        for style, _ in cfg.style_weights:
            text, _ = sample_answer(rng, sc, r["kind"], cfg, style=style)
            by_style.setdefault(style, []).append(oracle_score(sc, r["question"], text))
    lens = [len(r[k].split()) for r in train for k in ("response_1", "response_2")]
    return {
        "label_1_fraction": float(np.mean([r["overall_response"] == 1 for r in train])),
        "label_noise_rate": float(np.mean([r["label_noisy"] for r in train])),
        "noiseless_oracle_accuracy_id": float(np.mean(
            [(1 if r["oracle_1"] > r["oracle_2"] else 2) == r["overall_response"] for r in tid])),
        "answer_words_mean": float(np.mean(lens)), "answer_words_max": int(np.max(lens)),
        "oracle_mean_by_style": {k: float(np.mean(v)) for k, v in by_style.items()},
        "text_only_id": text_only_baselines(train, tid),
        "text_only_ood": text_only_baselines(train, tood),
        "text_only_id_by_pair_type": {t: text_only_baselines(train, [r for r in tid if r["pair_type"] == t])
                                      for t in PAIR_TYPES if any(r["pair_type"] == t for r in tid)},
    }

