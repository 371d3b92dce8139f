"""Memory-only slicing that must not change a number: the score-only RM scores a large batch in
calls of `policy_rl_rm.score_rows_per_call` rows (rows and their images sliced together), a key
checked by name like GRM judging's `judge_prompts_per_call`; sampled GRM judgments do not depend
on the judging call size (prompt groups per call, pairs per call); DPO's num_micro_batches is
checked by name."""

import os
import sys

import numpy as np
import pytest
from flax import nnx

from grlhfv_jax import config as config_schema
from grlhfv_jax import encoding, models
from grlhfv_jax.config import ConfigError
from grlhfv_jax.rollout import grm_judge
from grlhfv_jax.stages import judging
from grlhfv_jax.trainers import scoring


def _record_call_shapes(monkeypatch) -> list:
    """The [rows, T] of every RM scoring call (`scoring._scores`) from now on, in a list."""
    shapes, scores = [], scoring._scores

    def recording(model, b):
        shapes.append(tuple(b["input_ids"].shape))
        return scores(model, b)

    monkeypatch.setattr(scoring, "_scores", recording)
    return shapes


def test_scoring_in_slices_gives_the_scores_of_one_call(monkeypatch):
    """Calls of 2 and 3 rows on 5 rows: the scores of one call, and every call of the call size
    (the last one filled up: one compiled shape)."""
    import tiny_models as tm  # tests/ is on sys.path

    rm = models.from_config(tm.tiny_hf_config("qwen2_vl").to_dict(), rngs=nnx.Rngs(0), scalar_head=True)
    rows = [[[5, 6], (1, 2, 2), [7, 8, 9]], [[4, 4, 4]], [(1, 4, 2), [9]], [[3], (1, 2, 2), [11, 12]], [[8, 9, 10, 11]]]
    b = tm.make_batch(rows, pad_side="right")
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    whole = scoring.score_batch(rm, batch, rows=8)  # 5 rows <= 8: one call
    assert whole.shape == (5,) and np.std(whole) > 0
    shapes = _record_call_shapes(monkeypatch)
    T = batch["input_ids"].shape[1]
    for rows in (2, 3):  # calls of 2, 2, 1 (+1 fill) and of 3, 2 (+1 fill) rows
        shapes.clear()
        np.testing.assert_allclose(scoring.score_batch(rm, batch, rows=rows), whole, rtol=1e-5, atol=1e-6)
        assert shapes == [(rows, T)] * -(-5 // rows), f"calls of {rows} rows: {shapes}"


MAX_LEN = 128  # GRM prompt tokens (~110: the tiny template, an image of 4 tokens)


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory):
    """A codec on a tokenizer trained on GRM-like text, and the HF config of a tiny Qwen2-VL on it."""
    import tiny_models as tm  # tests/ is on sys.path
    from grlhfv_jax.data.tokenizer import train_tokenizer

    template = "{principles_block}<image>{question}\n# Response 1: {response_1}\n# Response 2: {response_2}\nScores:"
    corpus = [
        "The red circle is above the blue square. Scores \\boxed{7, 3}",
        "You are a helpful assistant.",
        "Response 1 is better than Response 2 because it is correct.",
        template,
        "What color is the shape? It is green and small. Which is better? Where is it?",
    ] * 30
    out_dir, ids = train_tokenizer(corpus, str(tmp_path_factory.mktemp("tok")), vocab_size=300)
    codec = encoding.Codec.from_dirs(out_dir, dict(min_pixels=56 * 56, max_pixels=56 * 56), template)
    cfg = tm.tiny_hf_config("qwen2_vl", text={"vocab_size": ids["vocab_size"]}).to_dict()
    for k in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "video_token_id"):
        cfg[k] = ids[k]
    return codec, cfg


@pytest.fixture(scope="module")
def tiny_grm(tiny_codec):
    """A tiny random Qwen2-VL GRM and its codec."""
    codec, cfg = tiny_codec
    return models.from_config(cfg, rngs=nnx.Rngs(3)), codec


def test_rm_evaluation_scores_in_calls_of_the_call_size(tiny_codec, monkeypatch):
    """rm_scores (the score-only RM's accuracy evaluation, `eval_rows` items per call) on 5 items:
    calls of 2 and 3 items give the scores of one call, and every call has the call size (the last
    one filled up with copies of the last item: one compiled shape)."""
    codec, cfg = tiny_codec
    rm = models.from_config(cfg, rngs=nnx.Rngs(4), scalar_head=True)
    rng = np.random.default_rng(1)
    img = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    items = [
        ("What color is the shape?", img[0], "It is green."),
        ("What color is the shape?", img[0], "Red."),
        ("Where is it?", img[1], "The blue square is above it."),
        ("Where is it?", img[1], "Small."),
        ("Which is better?", img[2], "Response 1 is better."),
    ]
    whole = judging.rm_scores(rm, codec, items, rows=8, max_len=MAX_LEN)  # 5 items <= 8: one call
    assert whole.shape == (5,) and np.std(whole) > 0
    shapes = _record_call_shapes(monkeypatch)
    for rows in (2, 3):  # calls of 2, 2, 1 (+1 fill) and of 3, 2 (+1 fill) items
        shapes.clear()
        got = judging.rm_scores(rm, codec, items, rows=rows, max_len=MAX_LEN)
        np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)
        assert shapes == [(rows, MAX_LEN)] * -(-5 // rows), f"calls of {rows} items: {shapes}"
    assert judging.rm_scores(rm, codec, [], rows=2, max_len=MAX_LEN).shape == (0,)


def test_sampled_judgments_do_not_depend_on_the_judging_call_size(tiny_grm):
    """Sampled GRM judging (temperature > 0): policy_rl.judge_prompts_per_call = 1, 2 and all
    groups (judge_groups: shared prefix cache, bucketed pair rows), and 4 or all pairs per call
    (judge: full prompts) give every pair the judgment of one call over all pairs with full prompts."""
    from grlhfv_jax.rollout import SamplingParams

    grm, codec = tiny_grm
    rng = np.random.default_rng(0)
    img = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    answers = ["It is green.", "Red circle.", "The blue square is above it.", "Green and small."]
    pairs = [
        [(answers[0], answers[1]), (answers[1], answers[0])],
        [(answers[2], answers[3]), (answers[3], answers[1]), (answers[0], answers[2])],
        [(answers[1], answers[3])],
    ]
    groups = [
        (q, im, p) for q, im, p in zip(["What color is the shape?", "Which is better?", "Where is it?"], img, pairs)
    ]
    items = [(q, im, a, b) for q, im, ps in groups for a, b in ps]
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0, seed=11)
    # reference: one call over all six pairs, each with its full prompt (no shared prefix, no slicing)
    ref = grm_judge.GRMJudge(grm, codec, rows=len(items), max_len=MAX_LEN).judge(items, sampled)
    assert len(ref) == 6 and len(set(ref)) > 1, ref
    other = grm_judge.GRMJudge(grm, codec, rows=len(items), max_len=MAX_LEN).judge(items, sampled.replace(seed=12))
    assert other != ref, "another seed draws the same judgments: the test would not see a changed key"
    for per_call in (1, 2, 3):  # calls of 2, 3, 1 pairs; 5, 1 pairs; 6 pairs
        got = grm_judge.GRMJudge(grm, codec, max_prompts=per_call).judge_groups(groups, sampled)
        assert [len(g) for g in got] == [2, 3, 1]
        assert [t for g in got for t in g] == ref, f"judge_prompts_per_call = {per_call}"
    assert grm_judge.GRMJudge(grm, codec, rows=4, max_len=MAX_LEN).judge(items, sampled) == ref, (
        "judge in calls of 4 and 2 pairs"
    )


def test_dpo_micro_batches_must_divide_the_pairs():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo

    c = demo.get_config("smoke")
    c.dpo.num_micro_batches = 3  # the demo: 16 pairs per step
    with pytest.raises(ConfigError, match=r"config\.dpo\.num_micro_batches = 3 must divide pairs_per_step = 16"):
        config_schema.validate(c)
    c.dpo.num_micro_batches = 4
    config_schema.validate(c)


@pytest.mark.parametrize(
    "section,key", [("policy_rl", "judge_prompts_per_call"), ("policy_rl_rm", "score_rows_per_call")]
)
def test_judging_and_scoring_call_sizes_must_be_positive(section, key):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo

    c = demo.get_config("smoke")
    assert config_schema.validate(c)[section][key] == {"judge_prompts_per_call": 16, "score_rows_per_call": 320}[key]
    c[section][key] = 0
    with pytest.raises(ConfigError, match=rf"config\.{section}\.{key} = 0: must be >= 1"):
        config_schema.validate(c)
