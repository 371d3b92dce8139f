"""Generative reward model (GRM): prompt template, score parsing and the paper's pair reward.

Everything here works on Python strings and never raises on a model-output string (empty,
unicode, nested or unclosed braces, several boxes). Only bad *labels* (``preferred`` not in
{1, 2}) raise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# The paper's template (adapted from DeepSeek-GRM), word for word, with three slots:
# {principles_block} (empty unless principles are given), {question}, {response_1}, {response_2}.
# `<image>` marks where the image goes; `build_grm_prompt` replaces it with `image_token`.
GRM_TEMPLATE = (
    "You are a skilled expert at scoring responses. You should first generate a list of potential "
    "criteria to evaluate given responses based on them.\n"
    "Given the context of the conversation (the last round is the User's query) and multiple "
    "responses from the Assistant, you need to generate the [Evaluation Criteria] to score the "
    "responses. Based on the criteria, state potential other specific criteria to the query, the "
    "weights of different criteria, and then provide an overall comprehensive score upon them.\n"
    "Each score is an integer between 1 and 10, with a higher score indicating that the response "
    "meets the relevant criteria more closely. For example, a score of 1 means the response does "
    "not meet the criteria at all, a score of 6 means the response meets only some parts, and a "
    "score of 10 means the response perfectly meets the evaluation criteria. Before scoring, "
    "please analyze step by step. Your scoring needs to be as strict as possible.\n"
    "{principles_block}"
    "#### Conversation Context ####\n"
    "<image>{question}\n"
    "#### Responses to be Scored ####\n"
    "# Response 1: {response_1}\n"
    "# Response 2: {response_2}\n"
    "#### Output Format Requirements ####\n"
    "Output with three lines\n"
    "Specific Criteria: <Other potential criteria specific to the query and the context, and the "
    "weights of each criteria>.\n"
    "Analysis: <Compare different responses based on given Criteria>.\n"
    "Scores: <the overall comprehensive score of all responses in order, separate by comma in the "
    "boxed, e.g., \\boxed{x, x} if there exists 2 responeses>."
)

# Inserted at {principles_block} when principles are given (our choice: the paper does not print
# where its principles ablation put them).
PRINCIPLES_BLOCK = "#### Evaluation Principles ####\n{principles}\n"

IMAGE_PLACEHOLDER = "<image>"
# What a Qwen2-VL chat prompt uses for one image (the processor expands <|image_pad|> later).
QWEN_IMAGE_TOKEN = "<|vision_start|><|image_pad|><|vision_end|>"

_SLOT_RE = re.compile(r"\{(principles_block|question|response_1|response_2|image)\}")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_BOXED = "\\boxed{"


def build_grm_prompt(
    question: str,
    response_1: str,
    response_2: str,
    principles: str | None = None,
    template: str = GRM_TEMPLATE,
    *,
    image_token: str | None = IMAGE_PLACEHOLDER,
    principles_block: str = PRINCIPLES_BLOCK,
) -> str:
    """The GRM's user text for one ordered pair.

    Slots are filled in one pass, so braces or slot names inside the question or responses are
    kept verbatim. Any ``<image>`` already in ``question`` (LLaVA-style data) is removed; the
    template's single ``<image>`` becomes ``image_token`` (``None`` or "" drops it: text-only).
    Pass ``image_token=QWEN_IMAGE_TOKEN`` to get text ready for Qwen2-VL's chat format.
    """
    question = question.replace(IMAGE_PLACEHOLDER, "").strip()
    block = principles_block.replace("{principles}", principles) if principles else ""
    values = {
        "principles_block": block,
        "question": question,
        "response_1": response_1,
        "response_2": response_2,
        "image": image_token or "",
    }
    # The template's own <image> becomes a slot before filling, so an "<image>" string inside a
    # response stays verbatim.
    template = template.replace(IMAGE_PLACEHOLDER, "{image}", 1)
    return _SLOT_RE.sub(lambda m: values[m.group(1)], template)


def split_at_image(text: str, image_token: str = IMAGE_PLACEHOLDER) -> tuple[str, str]:
    """(text before the image, text after it); ("", text) if there is no image."""
    idx = text.find(image_token)
    if idx < 0:
        return "", text
    return text[:idx], text[idx + len(image_token) :]


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}``, in order of their closing brace, braces
    matched (nesting allowed). One linear pass; an unclosed box is ignored."""
    out = []
    open_boxes = []  # (content start, brace depth inside the box)
    depth = 0
    i, n = 0, len(text)
    while i < n:
        if text.startswith(_BOXED, i):
            depth += 1
            i += len(_BOXED)
            open_boxes.append((i, depth))
            continue
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}" and depth > 0:
            if open_boxes and open_boxes[-1][1] == depth:
                out.append(text[open_boxes.pop()[0] : i])
            depth -= 1
        i += 1
    return out


def parse_scores(text) -> list[float] | None:
    """Numbers in the last complete ``\\boxed{...}``, comma separated; None if no box or a piece
    (after stripping spaces) is not a plain decimal number (``7``, ``-1``, ``7.5``, ``+3``)."""
    if not isinstance(text, str):
        return None
    boxes = _boxed_contents(text)
    if not boxes:
        return None
    scores = []
    for piece in boxes[-1].split(","):
        piece = piece.strip()
        if not _NUMBER_RE.fullmatch(piece):
            return None
        scores.append(float(piece))
    return scores


def _check_label(preferred) -> int:
    if preferred not in (1, 2):
        raise ValueError(f"preferred must be 1 or 2 (the human-preferred response), got {preferred!r}")
    return int(preferred)


def pair_reward(text, preferred: int) -> float:
    """The paper's GRM training reward: 1.0 if the last box holds exactly two scores that order
    the pair as the label does (ties count as wrong), else 0.0."""
    preferred = _check_label(preferred)
    scores = parse_scores(text)
    if scores is None or len(scores) != 2:
        return 0.0
    s1, s2 = scores
    if s1 == s2:
        return 0.0
    return 1.0 if (s1 > s2) == (preferred == 1) else 0.0


def pair_scores(text) -> tuple[float, float] | None:
    """(score of Response 1, score of Response 2), or None if the output is not exactly two."""
    scores = parse_scores(text)
    if scores is None or len(scores) != 2:
        return None
    return scores[0], scores[1]


def decisions(texts) -> np.ndarray:
    """Each judgment's decision: 1 (Response 1 scored higher), 2 (Response 2), 0 (tie), -1 (no two scores)."""
    out = []
    for t in texts:
        s = pair_scores(t)
        out.append(-1 if s is None else 0 if s[0] == s[1] else 1 if s[0] > s[1] else 2)
    return np.asarray(out, np.int64)


def judgment_stats(texts, group_size: int) -> dict[str, float]:
    """What a batch of judgments (grouped, `group_size` per prompt) says about the judge's health.

    judge/prefers_first: share of decided judgments that score Response 1 higher (0.5 = no position
    bias; 0 or 1 = the position alone decides); judge/tie_rate: share of parsed judgments that tie;
    judge/decision_entropy: mean over groups of the entropy (bits) of the group's decisions
    (1 / 2 / tie / unparsed): 0 means every sample of a group decides alike, so GRPO has no signal.
    """
    d = decisions(texts).reshape(-1, group_size)
    decided, parsed = d[d > 0], d[d >= 0]
    counts = np.stack([(d == v).sum(1) for v in (-1, 0, 1, 2)], axis=1) / group_size
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(counts > 0, counts * np.log2(counts), 0.0).sum(1)
    return {
        "judge/prefers_first": float(np.mean(decided == 1)) if decided.size else float("nan"),
        "judge/tie_rate": float(np.mean(parsed == 0)) if parsed.size else float("nan"),
        "judge/decision_entropy": float(ent.mean()),
    }


# ---------------------------------------------------------------------------- position debiasing


def swap_label(preferred: int) -> int:
    """The label of the same pair shown in the other order."""
    return 3 - _check_label(preferred)


def debiased_prompts(
    question: str,
    response_1: str,
    response_2: str,
    preferred: int,
    *,
    both_orders: bool = True,
    **prompt_kwargs,
) -> list[tuple[str, int]]:
    """[(prompt, label)] for the pair as given and, if ``both_orders``, swapped with the label
    flipped. ``prompt_kwargs`` go to `build_grm_prompt`."""
    preferred = _check_label(preferred)
    out = [(build_grm_prompt(question, response_1, response_2, **prompt_kwargs), preferred)]
    if both_orders:
        out.append((build_grm_prompt(question, response_2, response_1, **prompt_kwargs), swap_label(preferred)))
    return out


def consistency_reward(text_original, text_swapped, preferred: int) -> float:
    """1.0 only if the judgment is correct in both orders (J1-style); ``preferred`` refers to the
    original order."""
    ok = pair_reward(text_original, preferred) == 1.0 and pair_reward(text_swapped, swap_label(preferred)) == 1.0
    return 1.0 if ok else 0.0


def grm_rewards(
    texts: Sequence,
    labels: Sequence[int],
    *,
    mode: str = "pair",
    swapped_texts: Sequence | None = None,
) -> list[float]:
    """Rewards for a batch of GRM completions.

    mode "pair": the paper's `pair_reward(text, label)` for each completion.
    mode "consistency": `consistency_reward(texts[k], swapped_texts[k], labels[k])` (both
    completions of a rollout pair get the same reward).
    """
    if len(texts) != len(labels):
        raise ValueError(f"texts ({len(texts)}) and labels ({len(labels)}) differ in length")
    if mode == "pair":
        return [pair_reward(t, y) for t, y in zip(texts, labels)]
    if mode == "consistency":
        if swapped_texts is None or len(swapped_texts) != len(texts):
            raise ValueError("mode='consistency' needs swapped_texts, one per text")
        return [consistency_reward(a, b, y) for a, b, y in zip(texts, swapped_texts, labels)]
    raise ValueError(f"unknown GRM reward mode {mode!r}; choose 'pair' or 'consistency'")
