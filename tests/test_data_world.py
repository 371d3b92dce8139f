"""The synthetic world: determinism, the principle / oracle on hand-made cases, label noise, held-out
splits, pixels against scenes, and how little a text-only judge can do."""

import dataclasses
import re

import numpy as np
import pytest
from scipy import ndimage

from grlhfv_jax.data import world as W
from grlhfv_jax.rl.grm_reward import pair_reward, parse_scores

CFG = W.WorldConfig()


@pytest.fixture(scope="module")
def grm_train():
    return [W.make_record(CFG, "grm_train", i, encode_image=False) for i in range(2500)]


@pytest.fixture(scope="module")
def grm_test_id():
    return [W.make_record(CFG, "grm_test_id", i, encode_image=False) for i in range(1000)]


def _scene(colour="red", shape="circle", count=3, position="left"):
    rng = np.random.default_rng(0)
    while True:
        s = W.sample_scene(rng, CFG, combos=[(colour, shape)])
        if s.count == count and s.position == position:
            return s


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_records_any_order():
    a = [W.make_record(CFG, "grm_train", i) for i in range(6)]
    b = [W.make_record(CFG, "grm_train", i) for i in reversed(range(6))][::-1]
    assert a == b  # includes the PNG bytes
    c = [W.make_record(W.WorldConfig(seed=1), "grm_train", i) for i in range(6)]
    assert [r["response_1"] for r in a] != [r["response_1"] for r in c]
    assert [r["scene"] for r in a] != [r["scene"] for r in c]
    # splits draw from different streams
    d = [W.make_record(CFG, "grm_test_id", i) for i in range(6)]
    assert [r["scene"] for r in a] != [r["scene"] for r in d]


# ------------------------------------------------------------------------------ the principle


def test_oracle_hand_made_cases():
    s = _scene("red", "circle", 3, "left")
    col, cnt, shp, where, desc = (W.QUESTIONS[k][0] for k in W.KINDS)
    cases = [
        # (question, answer, expected score computed by hand from the rule in the docstring)
        (col, "They are red.", 0.2 + 0.65 + 0.15),
        (col, "They are blue.", 0.2),
        (col, "They are red or blue.", 0.2),  # two colours: the colour claim is wrong
        (col, "This is an excellent, accurate answer.", 0.2 + 0.65 * 0.25 - 0.05),
        (col, "", 0.2 + 0.65 * 0.25),
        (cnt, "There are three.", 0.85),
        (cnt, "There are 3.", 0.85),
        (cnt, "There are three red circles on the left.", 1.0),
        (cnt, "There are three blue circles.", 0.2 + 0.65 - 0.15),
        (cnt, "There are two red circles on the left.", 0.2 + 0.15),
        (cnt, "Maybe there are three.", 0.85 - 0.1),
        (cnt, "There are three red circles. Excellent answer.", 1.0 - 0.05),
        (shp, "They are squares.", 0.2),
        (shp, "They are circles at the top.", 0.2 + 0.65 - 0.15),
        (where, "They are on the left.", 0.85),
        (where, "They are on the right.", 0.2),
        (desc, "Three red circles.", 0.2 + 0.65 * (3.25 / 4) + 0.15),
        (desc, "There are three red circles on the left.", 1.0),
        (desc, "There are four red circles on the left.", 0.2 + 0.65 * 0.75 + 0.15),
        # 22 words: 6 beyond 16 -> verbosity 0.12
        (col, "They are red red red red red red red red red red red red red red red red red red red red.", 1.0 - 0.12),
    ]
    for q, a, want in cases:
        assert W.oracle_score(s, q, a) == pytest.approx(want, abs=1e-6), (q, a)


def test_preference_is_not_length():
    s = _scene("blue", "square", 2, "top")
    q = W.QUESTIONS["count"][0]
    short_right = "There are two."
    long_wrong = "There are four blue squares at the top of the image."
    long_right = "There are two blue squares at the top."
    assert W.preference(s, q, short_right, long_wrong) == 1
    assert W.preference(s, q, short_right, long_right) == 2  # naming the colour is preferred
    assert W.preference(s, q, "Maybe there are two.", "There are three.") == 1
    assert W.preference(s, q, "This is an excellent, accurate answer.", "There are three.") == 1
    assert W.preference(s, q, "There are two.", "There are two.") == 0


def test_oracle_never_raises_on_answers():
    s = _scene()
    rng = np.random.default_rng(0)
    alphabet = list("abc xyz0123456789.,!?{}\\\n\t") + ["red", " circles", " left", "é", "\x00"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 60))))
        v = W.oracle_score(s, "What colour are the objects?", text)
        assert 0.0 <= v <= 1.0
    for odd in (None, 12, "x" * 10000, "red " * 500):
        assert 0.0 <= W.oracle_score(s, "Describe the image.", odd) <= 1.0
    # the scene may come as JSON or dict too
    assert W.oracle_score(s.to_json(), "How many objects are there?", "There are three.") == pytest.approx(0.85)
    with pytest.raises(ValueError, match="scene"):
        W.oracle_score("{not json", "q", "a")
    with pytest.raises(ValueError, match="missing field 'centres'"):
        W.oracle_score({"shape": "circle", "colour": "red", "count": 1, "position": "left"}, "q", "a")


def test_labels_follow_principle_with_configured_noise(grm_train):
    noisy = np.array([r["label_noisy"] for r in grm_train])
    assert abs(noisy.mean() - 0.05) < 0.015  # 3 sigma of a binomial with n = 2500
    for r in grm_train:
        better = 1 if r["oracle_1"] > r["oracle_2"] else 2
        assert (r["overall_response"] == better) != r["label_noisy"]
        assert abs(r["oracle_1"] - r["oracle_2"]) >= CFG.min_margin - 1e-9
        # the stored oracle values are the oracle's
        assert W.oracle_score(r["scene"], r["question"], r["response_1"]) == pytest.approx(r["oracle_1"])
    assert 0.45 < np.mean([r["overall_response"] == 1 for r in grm_train]) < 0.55
    cfg = W.WorldConfig(label_noise=0.2)
    rate = np.mean([W.make_record(cfg, "grm_train", i, encode_image=False)["label_noisy"] for i in range(1500)])
    assert abs(rate - 0.2) < 0.035


def test_answers_short_and_sft_answers_best(grm_train):
    lens = [len(r[k].split()) for r in grm_train for k in ("response_1", "response_2")]
    assert max(lens) <= 13 and np.mean(lens) < 8
    for i in range(300):
        r = W.make_record(CFG, "sft_policy", i, encode_image=False)
        assert W.oracle_score(r["scene"], r["question"], r["answer"]) == 1.0
        assert len(r["answer"].split()) <= 12
    # a weaker warm start on request: about half of the answers are random candidates
    cfg = W.WorldConfig(p_sft_policy_good=0.5)
    best = [
        W.oracle_score(r["scene"], r["question"], r["answer"]) == 1.0
        for r in (W.make_record(cfg, "sft_policy", i, encode_image=False) for i in range(400))
    ]
    assert 0.45 < np.mean(best) < 0.7  # 0.5 best + the random candidates that happen to be best


def test_sft_grm_judgments_have_format_but_no_preference_information():
    recs = [W.make_record(CFG, "sft_grm", i, encode_image=False) for i in range(1200)]
    pat = re.compile(r"^Specific Criteria: [^\n]+\.\nAnalysis: [^\n]+\.\nScores: \\boxed\{(\d+), (\d+)\}$")
    agree = []
    for r in recs:
        m = pat.match(r["judgment"])
        assert m, r["judgment"]
        s1, s2 = int(m.group(1)), int(m.group(2))
        assert 1 <= s1 <= 9 and s1 + s2 == 10 and s1 != 5
        assert parse_scores(r["judgment"]) == [s1, s2]
        agree.append(pair_reward(r["judgment"], r["overall_response"]))
    # scores drawn independently of the label: they order the pair as the human did half the time
    assert abs(np.mean(agree) - 0.5) < 0.05
    # the analysis describes each response's wording, read from the text
    for r in recs[:200]:
        want = (
            f"Analysis: Response 1 {W.style_description(r['response_1'])}, "
            f"response 2 {W.style_description(r['response_2'])}."
        )
        assert want in r["judgment"]
    # "facts": also what the image shows and whether each response's facts are right
    facts_cfg = dataclasses.replace(CFG, sft_grm_analysis="facts")
    for i in range(200):
        r = W.make_record(facts_cfg, "sft_grm", i, encode_image=False)
        assert pat.match(r["judgment"]), r["judgment"]
        scene = W.Scene.from_any(r["scene"])
        checks = [W.fact_check(scene, r[f"response_{i}"]) for i in (1, 2)]
        styles = [W.style_description(r[f"response_{i}"]).removeprefix("is ") for i in (1, 2)]
        want = (
            f"Analysis: Image: {W.scene_description(scene)}. Response 1: {checks[0]}, {styles[0]}. "
            f"Response 2: {checks[1]}, {styles[1]}."
        )
        assert want in r["judgment"]
    none = W.make_record(W.WorldConfig(sft_grm_analysis="none"), "sft_grm", 0, encode_image=False)
    assert "Response 1" not in none["judgment"] and pat.match(none["judgment"])
    with pytest.raises(ValueError, match="sft_grm_analysis"):
        W.WorldConfig(sft_grm_analysis=True)


def test_sft_grm_first_scores_restrict_the_warm_start_scores_and_keep_them_uninformative():
    cfg = dataclasses.replace(CFG, sft_grm_first_scores=(2, 8))
    recs = [W.make_record(cfg, "sft_grm", i, encode_image=False) for i in range(1200)]
    scores = [tuple(parse_scores(r["judgment"])) for r in recs]
    assert set(scores) == {(2.0, 8.0), (8.0, 2.0)}
    assert abs(np.mean([s == (2.0, 8.0) for s in scores]) - 0.5) < 0.05
    assert abs(np.mean([pair_reward(r["judgment"], r["overall_response"]) for r in recs]) - 0.5) < 0.05
    # everything else about the records is as with the default scores (same rng draws)
    base = [W.make_record(CFG, "sft_grm", i, encode_image=False) for i in range(50)]
    for a, b in zip(recs, base):
        assert a["judgment"].rsplit("Scores:", 1)[0] == b["judgment"].rsplit("Scores:", 1)[0]
        assert (a["response_1"], a["response_2"], a["overall_response"]) == (
            b["response_1"],
            b["response_2"],
            b["overall_response"],
        )
    for bad in ((), (5,), (2, 10)):
        with pytest.raises(ValueError, match="sft_grm_first_scores"):
            W.WorldConfig(sft_grm_first_scores=bad)
    # independent second scores that straddle the first: the first score alone decides, never a tie
    cfg = dataclasses.replace(CFG, sft_grm_first_scores=(2, 8), sft_grm_second_scores=(3, 7))
    scores = [tuple(parse_scores(W.make_record(cfg, "sft_grm", i, encode_image=False)["judgment"])) for i in range(800)]
    assert set(scores) == {(2.0, 3.0), (2.0, 7.0), (8.0, 3.0), (8.0, 7.0)}
    first, second = np.array([s[0] for s in scores]), np.array([s[1] for s in scores])
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.1  # drawn independently
    with pytest.raises(ValueError, match="sft_grm_second_scores"):
        W.WorldConfig(sft_grm_first_scores=(2, 8), sft_grm_second_scores=(8,))


def test_sft_grm_opinions_make_the_warm_start_prefer_by_wording_at_the_given_rate():
    """Hand-counted: where the two wordings' values differ, P(judgment follows the opinion) =
    strength + (1 - strength) / 2 (the rest is a fair coin); elsewhere the scores are as without
    opinions; the analysis and criteria text are unchanged."""
    opinions = (("hedges", 1), ("praises itself", -1), ("only praises", -1))
    base_cfg = dataclasses.replace(CFG, sft_grm_first_scores=(2, 8), sft_grm_second_scores=(3, 7))
    value = dict(opinions)
    for strength, expected in ((0.5, 0.75), (1.0, 1.0), (0.0, 0.5)):
        cfg = dataclasses.replace(base_cfg, sft_grm_opinions=opinions, sft_grm_opinion_strength=strength)
        follows, same_value_first = [], []
        for i in range(1500):
            r = W.make_record(cfg, "sft_grm", i, encode_image=False)
            v1, v2 = (value.get(W.style_description(x), 0) for x in (r["response_1"], r["response_2"]))
            s1, s2 = parse_scores(r["judgment"])
            assert s1 in (2.0, 8.0) and s2 in (3.0, 7.0)
            if v1 != v2:
                follows.append((s1 > s2) == (v1 > v2))
            else:
                same_value_first.append(s1 > s2)
        assert len(follows) > 600, len(follows)
        se = (expected * (1 - expected) / len(follows)) ** 0.5
        assert abs(np.mean(follows) - expected) <= max(4 * se, 1e-9), (strength, np.mean(follows))
        assert abs(np.mean(same_value_first) - 0.5) < 0.06
    # the text before the scores is the record's text without opinions
    cfg = dataclasses.replace(base_cfg, sft_grm_opinions=opinions)
    for i in range(40):
        a, b = (
            W.make_record(cfg, "sft_grm", i, encode_image=False),
            W.make_record(base_cfg, "sft_grm", i, encode_image=False),
        )
        assert a["judgment"].rsplit("Scores:", 1)[0] == b["judgment"].rsplit("Scores:", 1)[0]
    assert W.WorldConfig.from_dict(dataclasses.asdict(cfg)) == cfg  # round trip through JSON-like lists
    with pytest.raises(ValueError, match="sft_grm_opinions"):
        W.WorldConfig(sft_grm_opinions=(("hedging", 1),))
    with pytest.raises(ValueError, match="straddle"):
        W.WorldConfig(sft_grm_first_scores=(3, 7), sft_grm_second_scores=(2, 8), sft_grm_opinions=opinions)
    with pytest.raises(ValueError, match="sft_grm_opinion_strength"):
        W.WorldConfig(sft_grm_opinion_strength=1.5)


def test_fact_check_and_scene_description_hand_cases():
    scene = W.Scene(shape="circle", colour="red", count=3, position="left", centres=((7, 14), (7, 28), (7, 42)))
    assert W.scene_description(scene) == "three red circles on the left"
    one = W.Scene(shape="square", colour="blue", count=1, position="top", centres=((28, 7),))
    assert W.scene_description(one) == "one blue square at the top"
    assert W.fact_check(scene, "They are red.") == "right"
    assert W.fact_check(scene, "Maybe there are three red circles on the left.") == "right"
    assert W.fact_check(scene, "They are blue.") == "wrong"
    assert W.fact_check(scene, "The three red circles are on the right.") == "wrong"  # one wrong fact is enough
    assert W.fact_check(scene, "They are red and orange.") == "wrong"  # two colours: wrong
    assert W.fact_check(scene, "This is an excellent, accurate answer.") == "no fact"
    assert W.fact_check(scene, "") == "no fact"


def test_style_description_hand_cases():
    assert W.style_description("They are red.") == "is plain"
    assert W.style_description("Maybe they are red.") == "hedges"
    assert W.style_description("Not sure, but there are two.") == "hedges"
    assert W.style_description("There are two. Excellent answer.") == "praises itself"
    assert W.style_description("This is an excellent, accurate answer.") == "only praises"
    assert W.style_description("") == "is plain"


# ------------------------------------------------------------------------------ splits


def test_ood_split_holds_out_kinds_and_combinations():
    held = set(CFG.heldout_combos)
    for split in ("sft_policy", "sft_grm", "grm_train", "grm_test_id", "policy_train", "policy_test"):
        for i in range(300):
            r = W.make_record(CFG, split, i, encode_image=False)
            sc = W.Scene.from_any(r["scene"])
            assert r["kind"] not in CFG.heldout_kinds and r["heldout"] == ""
            assert (sc.colour, sc.shape) not in held
            for k in ("response_1", "response_2", "answer"):
                if k in r:  # no training text names a held-out colour-shape pair
                    c = W.parse_claims(r[k])
                    assert not any(a in c["colour"] and b in c["shape"] for a, b in held), r[k]
    kinds = set()
    for i in range(400):
        r = W.make_record(CFG, "grm_test_ood", i, encode_image=False)
        sc = W.Scene.from_any(r["scene"])
        hk, hc = r["kind"] in CFG.heldout_kinds, (sc.colour, sc.shape) in held
        assert hk or hc
        assert r["heldout"] == {(True, True): "both", (True, False): "kind", (False, True): "combo"}[(hk, hc)]
        kinds.add(r["heldout"])
    assert kinds == {"kind", "combo", "both"}


def test_text_only_judges_by_pair_type(grm_train, grm_test_id):
    """Minimal and mixed pairs: a judge that does not see the image is near chance. Style pairs
    (same facts, different style): the text decides them."""
    ood = [W.make_record(CFG, "grm_test_ood", i, encode_image=False) for i in range(600)]
    for test in (grm_test_id, ood):
        for ptype in ("minimal", "mixed"):
            sub = [r for r in test if r["pair_type"] == ptype]
            b = W.text_only_baselines(grm_train[:1500], sub)
            assert abs(b["longer"] - 0.5) < 0.08 and b["bow_logreg"] < 0.6, (ptype, b)
        style = [r for r in test if r["pair_type"] == "style"]
        assert W.text_only_baselines(grm_train[:1500], style)["bow_logreg"] > 0.85
    # while the image-aware principle (noiseless oracle) matches the noisy labels ~95% of the time
    acc = np.mean([(1 if r["oracle_1"] > r["oracle_2"] else 2) == r["overall_response"] for r in grm_test_id])
    assert acc > 0.92
    # with no style pairs, the whole split is near chance for the text-only judges
    cfg = W.WorldConfig(p_style_pair=0.0, p_minimal_pair=0.5)
    tr = [W.make_record(cfg, "grm_train", i, encode_image=False) for i in range(1500)]
    te = [W.make_record(cfg, "grm_test_id", i, encode_image=False) for i in range(600)]
    b = W.text_only_baselines(tr, te)
    assert abs(b["longer"] - 0.5) < 0.06 and b["bow_logreg"] < 0.6, b
    # sanity of the baseline: it does learn a text-visible rule when there is one
    cheat = [
        dict(
            r,
            response_1=r["response_1"] + (" zz" if r["overall_response"] == 1 else ""),
            response_2=r["response_2"] + (" zz" if r["overall_response"] == 2 else ""),
        )
        for r in tr
    ]
    assert W.text_only_baselines(cheat[:1000], cheat[1000:])["bow_logreg"] > 0.95


def test_pair_types(grm_train):
    """Shares follow the config; style pairs state the same facts and differ only in style;
    minimal pairs share the template and differ in the stated values."""
    types = [r["pair_type"] for r in grm_train]
    for t, p in (
        ("minimal", CFG.p_minimal_pair),
        ("style", CFG.p_style_pair),
        ("mixed", 1 - CFG.p_minimal_pair - CFG.p_style_pair),
    ):
        assert abs(types.count(t) / len(types) - p) < 0.05, (t, types.count(t))
    for r in grm_train[:400]:
        c1, c2 = W.parse_claims(r["response_1"]), W.parse_claims(r["response_2"])
        d1 = W.oracle_details(r["scene"], r["question"], r["response_1"])
        d2 = W.oracle_details(r["scene"], r["question"], r["response_2"])
        if r["pair_type"] == "style":
            assert c1 == c2, r
            assert d1["key_credit"] == d2["key_credit"]
        elif r["pair_type"] == "minimal":
            assert c1 != c2, r
            assert (d1["hedge"], d1["praise"]) == (d2["hedge"], d2["praise"]), r
    assert W.WorldConfig(p_style_pair=0.0).p_style_pair == 0.0
    with pytest.raises(ValueError, match="p_minimal_pair \\+ p_style_pair"):
        W.WorldConfig(p_minimal_pair=0.6, p_style_pair=0.6)


# ------------------------------------------------------------------------------ pixels


def _components(img, colour):
    mask = np.all(img == np.array(colour, np.uint8), axis=-1)
    lab, n = ndimage.label(mask)  # 4-connectivity
    return mask, lab, n


@pytest.mark.parametrize("size", [56, 112])
def test_images_show_the_scene(size):
    cfg = W.WorldConfig(image_size=size)
    rng = np.random.default_rng(size)
    for _ in range(150):
        s = W.sample_scene(rng, cfg)
        img = W.render(s)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        mask, lab, n = _components(img, W.COLOURS[s.colour])
        bg = np.all(img == np.array(W.BACKGROUND, np.uint8), axis=-1)
        assert np.all(mask | bg)  # only the object colour and the background
        assert n == s.count, s
        ys, xs = np.nonzero(mask)
        half = size / 2
        side = {"left": xs < half, "right": xs >= half, "top": ys < half, "bottom": ys >= half}
        assert np.all(side[s.position]), s
        # ... and the objects are not all in one half of the other axis (the side is unambiguous)
        if s.position in ("left", "right"):
            assert ys.min() < half + size / 8 and ys.max() >= half - size / 8
        else:
            assert xs.min() < half + size / 8 and xs.max() >= half - size / 8
        for k in range(1, n + 1):
            yy, xx = np.nonzero(lab == k)
            h, w = yy.max() - yy.min() + 1, xx.max() - xx.min() + 1
            fill = len(yy) / (h * w)
            top = np.sum(yy == yy.min())
            bottom = np.sum(yy == yy.max())
            if s.shape == "square":
                assert fill > 0.95, (s, fill)
            elif s.shape == "circle":
                assert 0.7 < fill < 0.92, (s, fill)
            elif s.shape == "triangle":
                assert fill < 0.7 and bottom > top + 3, (s, fill, top, bottom)
            else:  # diamond: symmetric top and bottom tips
                assert fill < 0.7 and abs(bottom - top) <= 2, (s, fill, top, bottom)
            # each object's bounding box is centred on one of the scene's centres
            cy, cx = (yy.min() + yy.max()) / 2, (xx.min() + xx.max()) / 2
            assert min(np.hypot(cx - x, cy - y) for x, y in s.centres) < 2.5


def test_png_round_trip_and_corrupt_image():
    s = _scene("green", "diamond", 4, "bottom")
    img = W.render(s)
    assert np.array_equal(W.decode_png(W.encode_png(img)), img)
    data = W.encode_png(img)
    with pytest.raises(ValueError, match="rec-7: corrupt or unreadable image"):
        W.decode_png(data[:40] + b"\x00" * 20, where="rec-7")
    with pytest.raises(ValueError, match="expected encoded image bytes"):
        W.decode_png(123, where="rec-7")


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="image_size"):
        W.WorldConfig(image_size=50)
    with pytest.raises(ValueError, match="heldout_kinds"):
        W.WorldConfig(heldout_kinds=("colours",))
    with pytest.raises(ValueError, match="heldout_combos"):
        W.WorldConfig(heldout_combos=(("red", "hexagon"),))
    with pytest.raises(ValueError, match="sizes"):
        W.WorldConfig(sizes=(("grm_tran", 3),))
    with pytest.raises(KeyError, match="unknown split"):
        W.make_record(CFG, "grm_tran", 0)
    cfg = W.WorldConfig(seed=3, sizes=(("grm_train", 7),), heldout_kinds=("count", "where"))
    assert W.WorldConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg


def test_restyle_keeps_the_facts_and_follows_the_weights():
    rng = np.random.default_rng(0)
    assert W.restyle(rng, "They are red.", {"plain": 1.0}) == "They are red."
    hedged = W.restyle(rng, "They are red.", {"hedged": 1.0})
    assert hedged.endswith("they are red.") and W.style_description(hedged) == "hedges"
    praised = W.restyle(rng, "They are red.", {"praised": 1.0})
    assert praised.startswith("They are red. ") and W.style_description(praised) == "praises itself"
    assert W.restyle(rng, "They are red.", {"praise_only": 1.0}) in W.PRAISE_ONLY
    scene = W.Scene(shape="circle", colour="red", count=2, position="top", centres=((21, 7), (35, 7)))
    weights = {"plain": 0.4, "hedged": 0.25, "praised": 0.25, "praise_only": 0.1}
    outs = [W.restyle(rng, "They are red.", weights) for _ in range(4000)]
    kinds = [W.style_description(o) for o in outs]
    for style, want in (("is plain", 0.4), ("hedges", 0.25), ("praises itself", 0.25), ("only praises", 0.1)):
        assert abs(kinds.count(style) / len(outs) - want) < 0.03, style
    # the stated facts never change: right, or none at all
    assert {W.fact_check(scene, o) for o in outs} == {"right", "no fact"}
    with pytest.raises(ValueError, match="unknown style"):
        W.restyle(rng, "x", {"rude": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        W.restyle(rng, "x", {"plain": 0.0})
