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

from .answers import (  # noqa: F401
    _cap,
    _noun,
    _np,
    _pick,
    _wrong_value,
    good_answer,
    kind_of_question,
    render_answer,
    restyle,
    sample_answer,
    sample_claim,
    sample_style,
    styled,
)
from .config import (  # noqa: F401
    _COLOUR_WORDS,
    _COUNT_WORDS,
    _HEDGE_WORDS,
    _POSITION_WORDS,
    _PRAISE_WORDS,
    _SHAPE_WORDS,
    _SPLIT_ID,
    ATTRS,
    BACKGROUND,
    COLOURS,
    COUNTS,
    DEFAULT_SIZES,
    FACT_CHECKS,
    GRM_ANALYSIS,
    GRM_ANALYSIS_KINDS,
    GRM_CRITERIA,
    HEDGES,
    KEY_ATTRS,
    KINDS,
    NUMBER_WORDS,
    PAIR_SPLITS,
    PAIR_TYPES,
    POSITION_PHRASES,
    POSITIONS,
    PRAISE_ONLY,
    PRAISE_SUFFIXES,
    PROMPT_SPLITS,
    QUESTIONS,
    RESTYLE_STYLES,
    SHAPES,
    SPLITS,
    STYLE_PAIR_STYLES,
    STYLE_WORDS,
    WorldConfig,
)
from .oracle import (  # noqa: F401
    oracle_details,
    oracle_score,
    parse_claims,
    preference,
)
from .records import (  # noqa: F401
    _mentions_heldout_combo,
    _record_rng,
    _sample_pair,
    _scene_and_kind,
    fact_check,
    generate_split,
    grm_judgment,
    make_record,
    scene_description,
    style_description,
    world_texts,
)
from .scenes import (  # noqa: F401
    ATTR_VALUES,
    OBJECT_RADIUS,
    Scene,
    attribute_labels,
    decode_png,
    encode_png,
    render,
    sample_scene,
    vision_examples,
)
from .stats import (  # noqa: F401
    _text_features,
    text_only_baselines,
    world_stats,
)
