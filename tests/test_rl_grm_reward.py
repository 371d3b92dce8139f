"""GRM prompt, score parsing and the paper's pair reward, against hand-worked cases."""

import random

import pytest

from grlhfv_jax.rl import grm_reward as g

# ------------------------------------------------------------------------------------ parse_scores


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"Scores: \boxed{7, 3}", [7.0, 3.0]),
        (r"\boxed{7,3}", [7.0, 3.0]),
        (r"\boxed{  7 ,   3  }", [7.0, 3.0]),
        (r"\boxed{-2, 4.5}", [-2.0, 4.5]),
        (r"\boxed{+1, .5}", [1.0, 0.5]),
        (r"\boxed{8}", [8.0]),
        (r"\boxed{1, 2, 3}", [1.0, 2.0, 3.0]),
        # several boxes: the last one counts
        (r"e.g. \boxed{x, x} ... \boxed{2, 9} and finally \boxed{6, 5}", [6.0, 5.0]),
        (r"\boxed{6, 5} then a bad one \boxed{a, b}", None),
        # no box at all
        ("Scores: 7, 3", None),
        ("", None),
        (r"\boxed", None),
        (r"boxed{7, 3}", None),
        # unclosed last box: the last complete one counts
        (r"\boxed{4, 5} and \boxed{6, 7", [4.0, 5.0]),
        (r"\boxed{6, 7", None),
        # non-numeric pieces
        (r"\boxed{seven, 3}", None),
        (r"\boxed{7/10, 3/10}", None),
        (r"\boxed{7, }", None),
        (r"\boxed{}", None),
        (r"\boxed{7 8, 3}", None),
        (r"\boxed{nan, 3}", None),
        (r"\boxed{inf, 3}", None),
        (r"\boxed{1e3, 3}", None),
        (r"\boxed{７, 3}", None),  # full-width digit is not a plain number
        # nested braces are matched, then the content is not a number
        (r"\boxed{\frac{1}{2}, 3}", None),
        (r"\boxed{{7}, 3}", None),
        (r"}} stray { braces \boxed{2, 10} }}", [2.0, 10.0]),
        ("unicode ✓ café \\boxed{3, 4} 完", [3.0, 4.0]),
    ],
)
def test_parse_scores(text, expected):
    assert g.parse_scores(text) == expected


def test_parse_scores_non_string():
    assert g.parse_scores(None) is None
    assert g.parse_scores(12) is None


# ------------------------------------------------------------------------------------- pair_reward


@pytest.mark.parametrize(
    "text, preferred, expected",
    [
        (r"\boxed{8, 3}", 1, 1.0),
        (r"\boxed{8, 3}", 2, 0.0),
        (r"\boxed{3, 8}", 2, 1.0),
        (r"\boxed{3, 8}", 1, 0.0),
        (r"\boxed{5, 5}", 1, 0.0),  # tie
        (r"\boxed{5, 5}", 2, 0.0),
        (r"\boxed{5.5, 5}", 1, 1.0),
        (r"\boxed{-1, -2}", 1, 1.0),
        (r"\boxed{8}", 1, 0.0),  # one score
        (r"\boxed{8, 3, 1}", 1, 0.0),  # three scores
        ("no box here, Response 1 is better", 1, 0.0),
        (r"\boxed{8, x}", 1, 0.0),
        (r"\boxed{3, 8} wait, \boxed{8, 3}", 1, 1.0),  # last box wins
        ("", 2, 0.0),
    ],
)
def test_pair_reward(text, preferred, expected):
    assert g.pair_reward(text, preferred) == expected


def test_pair_reward_bad_label_raises():
    with pytest.raises(ValueError, match="preferred"):
        g.pair_reward(r"\boxed{1, 2}", 0)


def test_never_raises_on_random_strings():
    rng = random.Random(0)
    alphabet = list("\\boxed{},. -+0123456789aé✓\n") + ["\\boxed{", "}", "{"]
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        out = g.parse_scores(s)
        assert out is None or all(isinstance(x, float) for x in out)
        assert g.pair_reward(s, 1) in (0.0, 1.0)
        assert g.consistency_reward(s, s, 2) in (0.0, 1.0)


def test_pathological_input_is_fast():
    import time

    t0 = time.perf_counter()
    assert g.parse_scores("\\boxed{" * 50_000) is None
    assert g.parse_scores("{" * 50_000 + "\\boxed{1,2}") == [1.0, 2.0]  # stray opens before the box
    assert time.perf_counter() - t0 < 2.0


# ---------------------------------------------------------------------------- position debiasing


def test_consistency_reward():
    # original order: label 1; swapped order: label 2
    assert g.consistency_reward(r"\boxed{9, 2}", r"\boxed{2, 9}", 1) == 1.0
    assert g.consistency_reward(r"\boxed{9, 2}", r"\boxed{9, 2}", 1) == 0.0  # position bias
    assert g.consistency_reward(r"\boxed{9, 2}", r"\boxed{5, 5}", 1) == 0.0
    assert g.consistency_reward(r"\boxed{2, 9}", r"\boxed{9, 2}", 2) == 1.0
    assert g.consistency_reward("", r"\boxed{9, 2}", 2) == 0.0


def test_grm_rewards_modes():
    texts = [r"\boxed{9, 2}", r"\boxed{9, 2}", "junk"]
    assert g.grm_rewards(texts, [1, 2, 1]) == [1.0, 0.0, 0.0]
    swapped = [r"\boxed{2, 9}", r"\boxed{2, 9}", r"\boxed{2, 9}"]
    assert g.grm_rewards(texts, [1, 2, 1], mode="consistency", swapped_texts=swapped) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        g.grm_rewards(texts, [1, 2, 1], mode="bogus")


def test_debiased_prompts_swap_order_and_label():
    pairs = g.debiased_prompts("Q?", "first answer", "second answer", 2)
    assert [lab for _, lab in pairs] == [2, 1]
    a, b = pairs[0][0], pairs[1][0]
    assert "# Response 1: first answer\n# Response 2: second answer\n" in a
    assert "# Response 1: second answer\n# Response 2: first answer\n" in b
    assert len(g.debiased_prompts("Q?", "x", "y", 1, both_orders=False)) == 1


# ----------------------------------------------------------------------------------------- prompt


def test_prompt_fills_slots_verbatim():
    q = "<image>What is {response_2} in the picture?"
    r1 = "A cat {question} \\boxed{1, 2} <image>"
    r2 = "A dog"
    text = g.build_grm_prompt(q, r1, r2)
    # exactly the template's own <image> plus the one inside response 1
    assert text.count("<image>") == 2
    assert "#### Conversation Context ####\n<image>What is {response_2} in the picture?\n" in text
    assert "# Response 1: A cat {question} \\boxed{1, 2} <image>\n# Response 2: A dog\n" in text
    assert text.startswith("You are a skilled expert at scoring responses.")
    assert text.endswith("e.g., \\boxed{x, x} if there exists 2 responeses>.")
    assert "Evaluation Principles" not in text


def test_prompt_image_token_and_principles():
    text = g.build_grm_prompt("Q?", "a", "b", principles="Be safe.", image_token=g.QWEN_IMAGE_TOKEN)
    assert "<image>" not in text
    assert "#### Conversation Context ####\n<|vision_start|><|image_pad|><|vision_end|>Q?\n" in text
    assert "#### Evaluation Principles ####\nBe safe.\n#### Conversation Context ####" in text
    no_img = g.build_grm_prompt("Q?", "a", "b", image_token=None)
    assert "#### Conversation Context ####\nQ?\n" in no_img
    before, after = g.split_at_image(g.build_grm_prompt("Q?", "a", "b"))
    assert before.endswith("#### Conversation Context ####\n") and after.startswith("Q?\n")


def test_prompt_custom_template():
    t = "Q={question}|1={response_1}|2={response_2}|{principles_block}<image>"
    assert g.build_grm_prompt("q", "x", "y", template=t, image_token="[IMG]") == "Q=q|1=x|2=y|[IMG]"


def test_judgment_stats_by_hand():
    from grlhfv_jax.rl.grm_reward import decisions, judgment_stats

    texts = [
        "\\boxed{8, 2}",
        "\\boxed{7, 3}",
        "\\boxed{2, 8}",
        "no box",  # group 0: decisions 1, 1, 2, unparsed
        "\\boxed{6, 4}",
        "\\boxed{6, 4}",
        "\\boxed{6, 4}",
        "\\boxed{6, 4}",  # group 1: all 1
        "\\boxed{5, 5}",
        "\\boxed{1, 9}",
        "\\boxed{5, 5}",
        "\\boxed{3, 7}",
    ]  # group 2: tie, 2, tie, 2
    assert decisions(texts).tolist() == [1, 1, 2, -1, 1, 1, 1, 1, 0, 2, 0, 2]
    m = judgment_stats(texts, 4)
    assert m["judge/prefers_first"] == 6 / 9  # 6 of the 9 decided judgments score Response 1 higher
    assert m["judge/tie_rate"] == 2 / 11  # 2 ties among 11 parsed
    # group entropies (bits): {1/2, 1/4, 1/4} -> 1.5; one decision -> 0; {1/2, 1/2} -> 1
    assert abs(m["judge/decision_entropy"] - (1.5 + 0.0 + 1.0) / 3) < 1e-12
