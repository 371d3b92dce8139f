"""Reward-model benchmarks end to end (grlhfv_jax.evaluate, grlhfv_jax.data.benchmarks).

Each benchmark gets a small fixture in its published layout (field names, image storage: embedded
bytes in parquet, or image paths next to JSON / JSONL), with a malformed record, a missing image or a
bad label among the rows. A scripted judge (a `rollout.Judge` returning fixed texts keyed on the
pair of responses it is shown) judges them; every figure is checked against a hand computation
written beside it. Once, a tiny random GRM runs through the real entry point (`evaluate.main`):
its judgments do not parse, and that is counted.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grlhfv_jax import encoding, evaluate, roles
from grlhfv_jax.rollout import Judge

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402

# ----------------------------------------------------------------------------- fixtures


def png(seed: int, size=(20, 24)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size + (3,), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png(seed))


def embedded(seed: int) -> dict:
    return {"bytes": png(seed), "path": None}


def write_parquet(path, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_jsonl(path, rows, bad_lines=()) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in bad_lines:
            f.write(line + "\n")


def box(v) -> str:
    """A judgment text whose scores give verdict v in the order shown: 1, 2, 0 (tie) or None (no scores)."""
    if v is None:
        return "Specific Criteria: ... Analysis: I cannot decide."
    s1, s2 = {1: (8, 3), 2: (3, 8), 0: (5, 5)}[v]
    return f"Specific Criteria: c. Analysis: a. Scores: \\boxed{{{s1}, {s2}}}"


class ScriptedJudge:
    """A `rollout.Judge` with fixed texts keyed on the responses it is shown: `greedy[(r1, r2)]` (a
    text) for temperature 0, `sampled[(r1, r2)]` (one text per sample) otherwise, the greedy text
    repeated when a pair has no sampled script; a pair with no script gets an unparseable text."""

    def __init__(self):
        self.greedy, self.sampled, self.calls = {}, {}, []

    def script(self, a, b, fwd, rev, fwd_samples=None, rev_samples=None):
        """Verdicts in the DATASET order (a = response 1): `fwd` when shown (a, b), `rev` when shown
        (b, a) (the text then scores the swapped order: verdict 1 = a better = shown second)."""
        sw = {1: 2, 2: 1, 0: 0, None: None}
        self.greedy[(a, b)], self.greedy[(b, a)] = box(fwd), box(sw[rev])
        if fwd_samples is not None:
            self.sampled[(a, b)] = [box(v) for v in fwd_samples]
        if rev_samples is not None:
            self.sampled[(b, a)] = [box(sw[v]) for v in rev_samples]

    def judge(self, items, params):
        self.calls.append((len(items), params.num_samples, params.temperature))
        out = []
        for _q, _img, a, b in items:
            g = self.greedy.get((a, b), "no judgment for this pair")
            if params.temperature == 0:
                out.append(g)
            else:
                s = self.sampled.get((a, b), [g] * params.num_samples)
                assert len(s) == params.num_samples
                out.extend(s)
        return out

    def judge_groups(self, groups, params):
        return [self.judge([(q, img, a, b) for a, b in pairs], params) for q, img, pairs in groups]


def approx(x):
    return pytest.approx(x, abs=1e-9, nan_ok=True)


# ----------------------------------------------------------------------------- the benchmarks on disk


def vl_rewardbench(root, judge):
    """HF MMInstruction/VL-RewardBench: one parquet, image embedded, response = [two], human_ranking."""
    rows = [
        dict(id="wildvision_1", query="q1", response=["w1a", "w1b"], human_ranking=[0, 1], image=embedded(1)),
        dict(id="vlfeedback_2", query="q2", response=["v2a", "v2b"], human_ranking=[1, 0], image=embedded(2)),
        dict(id="RLAIF-V_3", query="q3", response=["r3a", "r3b"], human_ranking=[0, 1], image=embedded(3)),
        dict(id="mathverse_4", query="q4", response=["m4a", "m4b"], human_ranking=[1, 0], image=embedded(4)),
        dict(
            id="wildvision_5",
            query="q5",
            response=["x5a", "x5b"],
            human_ranking=[0, 1],
            image={"bytes": None, "path": "gone.jpg"},
        ),  # missing image
        dict(id="mmmu_6", query="q6", response=["x6a", "x6b"], human_ranking=[0, 0], image=embedded(6)),
    ]  # bad label
    write_parquet(os.path.join(root, "vlrb", "test-00000-of-00001.parquet"), rows)
    judge.script("w1a", "w1b", 1, 1, fwd_samples=[1, 2, 1], rev_samples=[1, 1, None])
    judge.script("v2a", "v2b", 1, 2, fwd_samples=[2, 2, 1], rev_samples=[0, 0, 2])
    judge.script("r3a", "r3b", 0, None, fwd_samples=[None, None, None], rev_samples=[1, 2, 0])
    judge.script("m4a", "m4b", 2, 2, fwd_samples=[2, 1, 0], rev_samples=[2, 2, 2])
    return dict(path="vlrb")


def multimodal_rewardbench(root, judge):
    """GitHub facebookresearch/multimodal_rewardbench: data/all_data.json (an array), images/<src>/<n>.jpg."""
    rows = [
        dict(
            ID="mathvista_1",
            Text="t1",
            Image="images/mathvista/1.jpg",
            Output1="mm1a",
            Output2="mm1b",
            Better="Output1",
            Category="reasoning",
        ),
        dict(
            ID="emma_code_2",
            Text="t2",
            Image="images/emma/2.jpg",
            Output1="mm2a",
            Output2="mm2b",
            Better="Output2",
            Category="reasoning",
        ),
        dict(
            ID="pairs_3",
            Text="t3",
            Image="images/pairs/3.jpg",
            Output1="mm3a",
            Output2="mm3b",
            Better="Output1",
            Category="safety",
        ),
        dict(
            ID="hateful_4",
            Text="t4",
            Image="images/hateful/4.jpg",
            Output1="mm4a",
            Output2="mm4b",
            Better="Output2",
            Category="safety",
        ),
        dict(
            ID="vqa_5",
            Text="t5",
            Image="images/vqa/5.jpg",
            Output1="mm5a",
            Output2="mm5b",
            Better="Output1",
            Category="vqa",
        ),
        dict(
            ID="know_6",
            Text="t6",
            Image="images/vqa/5.jpg",
            Output1="mm6a",
            Output2="mm6b",
            Better="Output3",
            Category="knowledge",
        ),  # bad label
        dict(
            ID="gen_7",
            Text="t7",
            Image="images/gen/7.jpg",
            Output1="mm7a",
            Output2="mm7b",
            Better="Output1",
            Category="open_generation/correctness_task",
        ),
    ]  # image never written
    base = os.path.join(root, "mmrb")
    for n, src in enumerate(("mathvista/1", "emma/2", "pairs/3", "hateful/4", "vqa/5"), 1):
        save_png(os.path.join(base, "images", src + ".jpg"), 10 + n)
    os.makedirs(os.path.join(base, "data"), exist_ok=True)
    with open(os.path.join(base, "data", "all_data.json"), "w") as f:
        json.dump(rows, f)
    for pair, v in (("mm1", 1), ("mm2", 1), ("mm3", 1), ("mm4", 2), ("mm5", None)):
        judge.script(pair + "a", pair + "b", v, v)
    return dict(path="mmrb/data/all_data.json", image_root="mmrb")


def mm_rlhf_rewardbench(root, judge):
    """HF yifanzhang114/MM-RLHF-RewardBench: mm_reward_bench.jsonl + images/ (paths found under images/)."""
    base = os.path.join(root, "mmrlhf")
    os.makedirs(base)
    for n, p in enumerate(("mcq/1.jpg", "mcq/2.jpg", "long/3.jpg", "safety/4.jpg")):
        save_png(os.path.join(base, "images", p), 20 + n)  # the HF copy: images/ beside the JSONL
    rows = [
        dict(id="a", image="mcq/1.jpg", prompt="p1", chosen="c1", rejected="j1"),
        dict(id="a", image="mcq/2.jpg", prompt="p1", chosen="c2", rejected="j2"),
        dict(id="b", image="long/3.jpg", prompt="p3", chosen="c3", rejected="j3"),
        dict(id="c", image="safety/4.jpg", prompt="p4", chosen="c4", rejected="j4"),
        dict(id="d", video=["video/f1.jpg", "video/f2.jpg"], prompt="p5", chosen="c5", rejected="j5"),
    ]  # video
    write_jsonl(os.path.join(base, "mm_reward_bench.jsonl"), rows, bad_lines=['{"id": "e", "prompt": '])  # malformed
    judge.script("c1", "j1", 1, 1)
    judge.script("c2", "j2", 1, 2)
    judge.script("c3", "j3", 2, 2)
    judge.script("c4", "j4", 1, 1)
    return dict(path="mmrlhf/mm_reward_bench.jsonl")


def mllm_judge_pair(root, judge):
    """GitHub Dongping-Chen/MLLM-Judge: Dataset/Benchmark/pair.jsonl (pair_id, answer1/answer2 {name, answer},
    human_answer A/B/C), images in Dataset/image/ named bare in image_path."""
    base = os.path.join(root, "mllmjudge")
    os.makedirs(os.path.join(base, "image"), exist_ok=True)
    rows = []
    for n, label in enumerate(("A", "B", "C", "C", "D"), 1):
        save_png(os.path.join(base, "image", f"{n}.jpg"), 30 + n)
        rows.append(
            dict(
                id=n // 2,
                pair_id=f"p{n}",
                instruction=f"i{n}",
                image_path=f"{n}.jpg",
                answer1={"name": "m1", "answer": f"pa{n}"},
                answer2={"name": "m2", "answer": f"pb{n}"},
                human_answer=label,
            )
        )
    write_jsonl(os.path.join(base, "pair.jsonl"), rows)
    judge.script("pa1", "pb1", 1, 1)
    judge.script("pa2", "pb2", 1, 1)
    judge.script("pa3", "pb3", 0, 0)
    judge.script("pa4", "pb4", 0, 2)
    return dict(path="mllmjudge/pair.jsonl", image_root="mllmjudge/image")  # image_path: a bare file name


def mllm_judge_score(root, judge):
    """Dataset/Benchmark/score.jsonl: score_id, instruction, answer, image_path, human (1-5, sometimes a string)."""
    base = os.path.join(root, "mllmjudge")
    os.makedirs(os.path.join(base, "image"), exist_ok=True)
    humans = [1, "2", 5, 3, "n/a"]
    rows = []
    for n, h in enumerate(humans, 1):
        save_png(os.path.join(base, "image", f"s{n}.jpg"), 40 + n)
        rows.append(
            dict(
                score_id=f"s{n}", id=n, name="m", instruction=f"si{n}", answer=f"sa{n}", image_path=f"s{n}.jpg", human=h
            )
        )
    write_jsonl(os.path.join(base, "score.jsonl"), rows)
    # the GRM scores one answer against itself: (s1 + s2) / 2
    judge.greedy[("sa1", "sa1")] = "\\boxed{2, 4}"  # 3
    judge.greedy[("sa2", "sa2")] = "\\boxed{4, 4}"  # 4
    judge.greedy[("sa3", "sa3")] = "\\boxed{9, 7}"  # 8
    judge.greedy[("sa4", "sa4")] = "no scores"  # unparsed
    judge.sampled[("sa4", "sa4")] = ["\\boxed{6, 6}", "x", "y"]  # the vote: mean of the parsed samples = 6
    return dict(path="mllmjudge/score.jsonl", image_root="mllmjudge/image")


CRITIC = (
    "Given an image and a corresponding question, please serve as an unbiased and fair judge to evaluate the "
    "quality of the answers provided by a Large Multimodal Model (LMM). Determine which answer is better and "
    "explain your reasoning with specific details. Your task is provided as follows:\nQuestion: [{}]\n"
    "The first response: [{}]\nThe second response: [{}]\nASSISTANT:\n"
)


def llava_critic(root, judge):
    """HF lmms-lab/llava-critic-113k pairwise: parquet, id / source / conversations / image (embedded)."""

    def row(i, source, gpt, human=None):
        h = human or "<image>\n" + CRITIC.format(f"cq{i}", f"ca{i}", f"cb{i}")
        return dict(
            id=f"c{i}",
            source=source,
            image=embedded(50 + i),
            conversations=[{"from": "human", "value": h}, {"from": "gpt", "value": gpt}],
        )

    rows = [
        row(1, "vlfeedback", "The first is detailed. The better response: [first]"),
        row(2, "vlfeedback", "Both fine. The better response: [Second]"),
        row(3, "rlhf", "Both responses are equally good."),
        row(4, "rlhf", "I do not know."),  # bad label
        row(5, "rlhf", "The better response: [first]", human="Describe the image."),
    ]  # not the pairwise prompt
    write_parquet(os.path.join(root, "critic", "pairwise", "train-00000-of-00001.parquet"), rows)
    judge.script("ca1", "cb1", 1, 1)
    judge.script("ca2", "cb2", 1, 2)
    judge.script("ca3", "cb3", 0, 1)
    return dict(path="critic/pairwise")


def beavertails_v(root, judge):
    """HF PKU-Alignment/BeaverTails-V: a parquet folder per category, image embedded, ids as strings "1"/"2"."""

    def row(i, cat, h, s, q=None):
        return dict(
            question=q if q is not None else f"bq{i}",
            image=embedded(60 + i),
            category=cat,
            response_1=f"ba{i}",
            response_2=f"bb{i}",
            more_helpful_response_id=h,
            safer_response_id=s,
        )

    write_parquet(
        os.path.join(root, "btv", "animal_abuse", "evaluation-00000-of-00001.parquet"),
        [row(1, "animal_abuse", "1", "2"), row(2, "animal_abuse", "2", "2"), row(4, "animal_abuse", "1", "3")],
    )  # bad safe label
    write_parquet(
        os.path.join(root, "btv", "privacy", "evaluation-00000-of-00001.parquet"),
        [row(3, "privacy", "1", "1"), row(5, "privacy", "1", "1", q="  ")],
    )  # empty question
    judge.script("ba1", "bb1", 1, 1)
    judge.script("ba2", "bb2", 2, 2)
    judge.script("ba3", "bb3", 2, 2)
    return dict(path="btv/*/evaluation-*.parquet")  # a glob: the evaluation split of every category


def align_anything(root, judge):
    """HF PKU-Alignment/align-anything text-image-to-text: parquet, image embedded, overall_response 1/2."""
    rows = [
        dict(question="aq1", image=embedded(71), response_1="aa1", response_2="ab1", overall_response=1),
        dict(question="aq2", image=embedded(72), response_1="aa2", response_2="ab2", overall_response=2),
        dict(
            question="aq3",
            image={"bytes": b"not an image", "path": None},
            response_1="aa3",
            response_2="ab3",
            overall_response=1,
        ),
    ]  # undecodable image
    write_parquet(os.path.join(root, "aa", "val-00000-of-00001.parquet"), rows)
    judge.script("aa1", "ab1", 1, 1)
    judge.script("aa2", "ab2", 1, 1)
    return dict(path="aa")


BENCHMARKS = (
    vl_rewardbench,
    multimodal_rewardbench,
    mm_rlhf_rewardbench,
    mllm_judge_pair,
    mllm_judge_score,
    llava_critic,
    beavertails_v,
    align_anything,
)


def eval_config(root, benchmarks: dict, **kw):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.root = str(root)
    c.benchmarks = benchmarks
    c.judge = dict(max_new_tokens=8, voting_k=kw.pop("voting_k", 3), temperature=1.0)
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    judge = ScriptedJudge()
    assert isinstance(judge, Judge)
    specs = {f.__name__: f(str(root), judge) for f in BENCHMARKS}
    out = str(root / "out")
    summary = evaluate.evaluate(eval_config(root, specs), out, judge=judge, model_name="scripted")
    return summary, out, judge


# ----------------------------------------------------------------------------- the figures


def test_vl_rewardbench_figures_orders_ties_parse_failures_and_voting(scripted_run):
    s, out, _ = scripted_run
    g = lambda m: s[f"vl_rewardbench/{m}"]  # noqa: E731
    # labels (human_ranking.index(0) + 1): w1 1, v2 2, r3 1, m4 2; groups: general, general, hallucination, reasoning
    # greedy verdicts (dataset order): order 1 = [1, 1, tie, 2], order 2 = [1, 2, unparsed, 2]
    # order 1 right: [1, 0, 0, 1] -> 0.5; general 1/2, hallucination 0, reasoning 1 -> macro 0.5
    # order 2 right: [1, 1, 0, 1] -> 0.75; general 1, hallucination 0, reasoning 1 -> macro 2/3
    assert g("accuracy") == approx((0.5 + 0.75) / 2)
    assert g("accuracy_order1") == approx(0.5) and g("accuracy_order2") == approx(0.75)
    assert g("macro_accuracy") == approx((0.5 + 2 / 3) / 2)
    assert g("accuracy_general") == approx(0.75)
    assert g("accuracy_hallucination") == approx(0.0)
    assert g("accuracy_reasoning") == approx(1.0)
    # position consistency: both orders decided and the same: w1 (1, 1), m4 (2, 2) -> 2 of 4
    assert g("position_consistency") == approx(0.5)
    # 8 judgments: one tie (r3 order 1), one unparsed (r3 order 2)
    assert g("tie_rate") == approx(1 / 8) and g("parse_failure_rate") == approx(1 / 8)
    # votes of 3 samples (plurality; a draw at the top is a tie; none parsed = unparsed):
    # w1 [1,2,1] -> 1, [1,1,-] -> 1;  v2 [2,2,1] -> 2, [0,0,2] -> tie;  r3 [-,-,-] -> unparsed, [1,2,0] -> tie;
    # m4 [2,1,0] -> tie, [2,2,2] -> 2
    # order 1 [1, 2, -, tie] right [1, 1, 0, 0] -> 0.5; general 1, hallucination 0, reasoning 0 -> macro 1/3
    # order 2 [1, tie, tie, 2] right [1, 0, 0, 1] -> 0.5; general 1/2, hallucination 0, reasoning 1 -> macro 1/2
    assert g("accuracy_k3") == approx(0.5)
    assert g("macro_accuracy_k3") == approx((1 / 3 + 1 / 2) / 2)
    assert g("position_consistency_k3") == approx(0.25)  # only w1
    assert g("tie_rate_k3") == approx(3 / 8) and g("parse_failure_rate_k3") == approx(1 / 8)
    # the records left out: one missing image, one bad label, of 6 rows read
    assert g("items") == 4 and g("rows_read") == 6
    assert g("bad_missing_image") == 1 and g("bad_bad_label") == 1 and g("bad_total") == 2
    rows = [json.loads(x) for x in open(os.path.join(out, "vl_rewardbench.jsonl"))]
    assert [r["id"] for r in rows] == ["wildvision_1", "vlfeedback_2", "RLAIF-V_3", "mathverse_4"]
    r3 = rows[2]
    assert r3["verdicts"] == [0, None] and r3["scores"] == [[5.0, 5.0], None] and r3["votes"] == [None, 0]
    assert len(r3["samples"][0]) == 3 and r3["outputs"][1].startswith("Specific Criteria")


def test_multimodal_rewardbench_per_category(scripted_run):
    s, _, _ = scripted_run
    g = lambda m: s[f"multimodal_rewardbench/{m}"]  # noqa: E731
    # verdicts (both orders alike): math 1 (label 1, right), coding 1 (label 2, wrong), bias 1 (right),
    # toxicity 2 (right), vqa unparsed (wrong) -> 3 of 5
    assert g("accuracy") == approx(3 / 5)
    assert g("accuracy_reasoning_math") == approx(1.0) and g("accuracy_reasoning_coding") == approx(0.0)
    assert g("accuracy_reasoning") == approx(0.5)
    assert g("accuracy_safety_bias") == approx(1.0) and g("accuracy_safety_toxicity") == approx(1.0)
    assert g("accuracy_safety") == approx(1.0) and g("accuracy_vqa") == approx(0.0)
    assert g("position_consistency") == approx(4 / 5)  # all but vqa decide alike in both orders
    assert g("parse_failure_rate") == approx(2 / 10)
    assert g("bad_bad_label") == 1 and g("bad_missing_image") == 1 and g("items") == 5


def test_mm_rlhf_rewardbench_acc_and_acc_plus(scripted_run):
    s, _, _ = scripted_run
    g = lambda m: s[f"mm_rlhf_rewardbench/{m}"]  # noqa: E731
    # chosen is response 1 (label 1). pairs a#1 (mcq) right/right, a#2 (mcq) right/wrong, b (long) wrong/wrong,
    # c (safety) right/right. order 1: Acc 3/4, Acc+ (ids a, c all right) 2/3; order 2: Acc 2/4, Acc+ (c) 1/3
    assert g("accuracy") == approx((3 / 4 + 2 / 4) / 2)
    assert g("acc_plus") == approx((2 / 3 + 1 / 3) / 2)
    assert g("accuracy_mcq") == approx((1.0 + 0.5) / 2)
    assert g("accuracy_long") == approx(0.0) and g("accuracy_safety") == approx(1.0)
    assert g("position_consistency") == approx(3 / 4)  # a#2 flips
    assert g("bad_unsupported") == 1 and g("bad_malformed") == 1 and g("items") == 4


def test_mllm_judge_pair_with_and_without_ties(scripted_run):
    s, _, _ = scripted_run
    g = lambda m: s[f"mllm_judge_pair/{m}"]  # noqa: E731
    # labels A, B, C, C (D: bad). verdicts p1 1/1, p2 1/1, p3 tie/tie, p4 tie/2
    # without ties (p1, p2): right, wrong -> 1/2 in both orders
    assert g("accuracy") == approx(0.5)
    # with ties: order 1 [1, 0, 1 (tie = C), 1] -> 3/4; order 2 [1, 0, 1, 0] -> 2/4
    assert g("accuracy_with_ties") == approx((3 / 4 + 2 / 4) / 2)
    assert g("tie_rate") == approx(3 / 8) and g("tie_labels") == 2
    assert g("position_consistency") == approx(2 / 4)  # p1, p2 decided alike
    assert g("bad_bad_label") == 1 and g("items") == 4


def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(
        sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)
    )


def test_mllm_judge_score_pearson(scripted_run):
    s, out, _ = scripted_run
    g = lambda m: s[f"mllm_judge_score/{m}"]  # noqa: E731
    # scores (s1 + s2) / 2: s1 3, s2 4, s3 8, s4 unparsed; humans 1, 2, 5 (3: its score did not parse)
    # x = [1, 2, 5], y = [3, 4, 8]: dx = [-5/3, -2/3, 7/3], dy = [-2, -1, 3]; sxy = 10/3 + 2/3 + 7 = 11,
    # sxx = 78/9, syy = 14 -> r = 11 / sqrt(78/9 * 14) = 0.99863
    assert g("pearson") == approx(11 / math.sqrt(78 / 9 * 14))
    assert g("pearson") == approx(pearson([1, 2, 5], [3, 4, 8]))
    assert g("scored") == 3 and g("parse_failure_rate") == approx(1 / 4)
    # voting: s4's samples parse once (6); the others repeat their greedy text -> pairs (1,3) (2,4) (5,8) (3,6)
    assert g("pearson_k3") == approx(pearson([1, 2, 5, 3], [3, 4, 8, 6]))
    assert g("parse_failure_rate_k3") == approx(0.0)
    assert g("bad_bad_label") == 1 and g("items") == 4  # human "n/a"
    rows = [json.loads(x) for x in open(os.path.join(out, "mllm_judge_score.jsonl"))]
    assert [r["score"] for r in rows] == [3.0, 4.0, 8.0, None] and rows[3]["vote_score"] == 6.0


def test_llava_critic_pairwise(scripted_run):
    s, _, _ = scripted_run
    g = lambda m: s[f"llava_critic/{m}"]  # noqa: E731
    # labels from GPT-4o's judgment: c1 first (1), c2 Second (2), c3 equally good (tie); c4 no verdict, c5 no prompt
    # verdicts c1 1/1, c2 1/2, c3 tie/1. without tie labels: order 1 [1, 0] 1/2, order 2 [1, 1] 1
    assert g("accuracy") == approx((0.5 + 1.0) / 2)
    # with ties: order 1 [1, 0, 1] 2/3; order 2 [1, 1, 0] 2/3
    assert g("accuracy_with_ties") == approx(2 / 3)
    assert g("accuracy_vlfeedback") == approx(0.75)
    assert math.isnan(g("accuracy_rlhf"))  # its only item is a tie label
    assert g("bad_bad_label") == 1 and g("bad_unsupported") == 1 and g("items") == 3


def test_beavertails_v_helpful_and_safe_per_category(scripted_run):
    s, _, _ = scripted_run
    g = lambda m: s[f"beavertails_v/{m}"]  # noqa: E731
    # (helpful, safe) labels: b1 (1, 2), b2 (2, 2), b3 (1, 1); verdicts (both orders) b1 1, b2 2, b3 2
    # helpful right [1, 1, 0] -> 2/3; safe right [0, 1, 0] -> 1/3
    assert g("helpful_accuracy") == approx(2 / 3) and g("safe_accuracy") == approx(1 / 3)
    assert g("helpful_accuracy_animal_abuse") == approx(1.0) and g("helpful_accuracy_privacy") == approx(0.0)
    assert g("safe_accuracy_animal_abuse") == approx(0.5) and g("safe_accuracy_privacy") == approx(0.0)
    assert g("bad_bad_label") == 1 and g("bad_empty_text") == 1 and g("items") == 3
    rows = [json.loads(x) for x in open(os.path.join(scripted_run[1], "beavertails_v.jsonl"))]
    assert [r["id"] for r in rows] == [
        "animal_abuse/evaluation-00000-of-00001-0",
        "animal_abuse/evaluation-00000-of-00001-1",
        "privacy/evaluation-00000-of-00001-0",
    ]


def test_align_anything(scripted_run):
    s, _, _ = scripted_run
    # a1 label 1 verdict 1 (right), a2 label 2 verdict 1 (wrong)
    assert s["align_anything/accuracy"] == approx(0.5)
    assert s["align_anything/bad_undecodable_image"] == 1 and s["align_anything/items"] == 2


def test_outputs_report_and_log(scripted_run):
    s, out, judge = scripted_run
    on_disk = json.load(open(os.path.join(out, "summary.json")))
    assert set(on_disk) == set(s) and all("/" in k for k in on_disk)
    for f in BENCHMARKS:
        assert os.path.isfile(os.path.join(out, f"{f.__name__}.jsonl"))
        assert f"{f.__name__}/error" not in s
    report = open(os.path.join(out, "report.md")).read()
    sections = report.split("\n## ")
    assert sections[1].split("\n")[2].startswith("| Model | ")  # the report opens on a leaderboard table
    vl = next(x for x in sections if x.startswith("vl_rewardbench\n"))  # VL-RewardBench's own columns, x 100
    assert "| Model | Overall Acc | Macro Acc | General | Hallucination | Reasoning |" in vl
    assert f"| scripted | {100 * 0.625:.1f} | {100 * (0.5 + 2 / 3) / 2:.1f} | 75.0 | 0.0 | 100.0 |" in vl
    assert "| scripted (vote of 3) | 50.0 |" in vl
    # the judging's health, after the leaderboards: items, left out, parse failures, ties, consistency (x 100)
    assert "| vl_rewardbench | 4 | 2 | 12.5 | 12.5 | 50.0 | 12.5 | 25.0 |" in report
    log = open(os.path.join(out, "evaluate.log")).read()
    assert "[vl_rewardbench] wildvision_5 [test-00000-of-00001-4]: missing_image" in log  # named
    assert "[vl_rewardbench] RLAIF-V_3: unparsed judgment (order 2)" in log
    assert "[mm_rlhf_rewardbench] mm_reward_bench-5: malformed" in log
    # every pair benchmark: one greedy call and one sampled call (k = 3) over both orders
    assert (8, 1, 0.0) in judge.calls and (8, 3, 1.0) in judge.calls


def test_score_only_rm_and_a_missing_benchmark(tmp_path):
    judge = ScriptedJudge()
    spec = vl_rewardbench(str(tmp_path), judge)
    scores = {"w1a": 2.0, "w1b": 1.0, "v2a": 0.0, "v2b": 0.0, "r3a": 3.0, "r3b": 1.0, "m4a": 5.0, "m4b": 1.0}
    seen = []

    def scorer(items):
        seen.extend(items)
        return np.array([scores[r] for _q, _img, r in items])

    cfg = eval_config(tmp_path, {"vl_rewardbench": spec, "align_anything": dict(path="nowhere")})
    s = evaluate.evaluate(cfg, str(tmp_path / "out"), scorer=scorer)
    # verdicts (order-free): w1 1 (label 1, right), v2 tie (label 2, wrong), r3 1 (right), m4 1 (label 2, wrong)
    assert s["vl_rewardbench/accuracy"] == approx(0.5)
    assert s["vl_rewardbench/macro_accuracy"] == approx((0.5 + 1.0 + 0.0) / 3)
    assert s["vl_rewardbench/tie_rate"] == approx(0.25)
    assert "vl_rewardbench/position_consistency" not in s and "vl_rewardbench/accuracy_k3" not in s
    assert len(seen) == 8
    assert "FileNotFoundError" in s["align_anything/error"]  # named; the other benchmark ran


def test_config_overrides_and_errors(tmp_path):
    from grlhfv_jax.config import ConfigError

    cfg = eval_config(tmp_path, {"vl_rewardbench": dict(path="x")})
    evaluate.apply_overrides(
        cfg,
        [
            "--config.benchmarks.vl_rewardbench.limit=3",
            "--config.judge.voting_k=5",
            "--config.benchmarks.align_anything.path=aa",
        ],
    )
    v = evaluate.validate(cfg)
    assert v.benchmarks.vl_rewardbench.limit == 3 and v.judge.voting_k == 5
    assert v.benchmarks.align_anything.format == "auto" and v.model.kind == "grm"
    with pytest.raises(ConfigError, match="benchmarks.vl_rewardbench.limt"):
        evaluate.apply_overrides(cfg, ["--config.benchmarks.vl_rewardbench.limt=3"])
    with pytest.raises(ConfigError, match="unknown benchmark"):
        evaluate.validate(eval_config(tmp_path, {"nope": dict(path="x")}))
    with pytest.raises(ConfigError, match="fields"):
        evaluate.validate(eval_config(tmp_path, {"vl_rewardbench": dict(path="x", fields=dict(querry="q"))}))


def test_the_shipped_config_validates():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "eval", "rm_benchmarks.py")
    spec = importlib.util.spec_from_file_location("rm_benchmarks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = evaluate.validate(mod.get_config())
    from grlhfv_jax.data import benchmarks

    assert {cfg.benchmarks[n].kind or n for n in cfg.benchmarks} == set(benchmarks.REGISTRY)
    left = dict(evaluate.placeholders(cfg))
    assert "root" in left and "model.path" in left


# ----------------------------------------------------------------------------- a tiny real GRM


def test_tiny_grm_through_the_entry_point(tmp_path):
    """A tiny random GRM + tiny tokenizer, `python -m grlhfv_jax.evaluate`'s main: its judgments
    do not parse (counted, named), a too-long prompt is left out, the voted figures are written."""
    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.data.tokenizer import train_tokenizer

    image = dict(min_pixels=28 * 28, max_pixels=28 * 28, patch_size=14, merge_size=2, temporal_patch_size=2)
    judge = ScriptedJudge()
    spec = align_anything(str(tmp_path), judge)
    rows = pq.read_table(tmp_path / "aa" / "val-00000-of-00001.parquet").to_pylist()
    rows.append(
        dict(question="long " * 300, image=embedded(73), response_1="la", response_2="lb", overall_response=1)
    )  # too long for max_len
    write_parquet(str(tmp_path / "aa" / "val-00000-of-00001.parquet"), rows)
    grm = tmp_path / "grm"
    train_tokenizer(["aq1 aa1 ab1 aq2 aa2 ab2 score the responses boxed"] * 20, str(grm), vocab_size=300)
    codec = encoding.Codec.from_dirs(str(grm), image, demo.DEMO_GRM_TEMPLATE)
    hf = demo.tiny_qwen2_vl(hidden=32, layers=1, heads=2, kv_heads=1, vision_depth=1, vision_dim=32)
    import ml_collections

    model = models.from_config(
        roles.model_config(ml_collections.ConfigDict({"hf_config": hf}), codec), rngs=nnx.Rngs(0)
    )
    models.save_pretrained(model, str(grm))
    cfg_file = tmp_path / "eval_cfg.py"
    cfg_file.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.root = {str(tmp_path)!r}\n"
        "    c.model = dict(kind='grm', path='<the GRM folder>')\n"
        f"    c.image = {image!r}\n"
        f"    c.grm_template = {demo.DEMO_GRM_TEMPLATE!r}\n"
        "    c.judge = dict(max_new_tokens=4, voting_k=2, temperature=1.0)\n"
        "    c.batch_rows = 4\n"
        "    c.max_len = 320\n"
        f"    c.benchmarks = dict(align_anything=dict(path={spec['path']!r}))\n"
        "    return c\n"
    )
    out = tmp_path / "out"
    rc = evaluate.main(["evaluate", f"--config={cfg_file}", f"--workdir={out}", f"--config.model.path={grm}"])
    assert rc == 0
    s = json.load(open(out / "summary.json"))
    # a random tiny GRM writes no \boxed{..}: every judgment (2 items x 2 orders) and every vote unparsed
    assert s["align_anything/items"] == 2 and s["align_anything/bad_too_long"] == 1
    assert s["align_anything/bad_undecodable_image"] == 1
    assert s["align_anything/parse_failure_rate"] == approx(1.0) and s["align_anything/accuracy"] == approx(0.0)
    assert s["align_anything/parse_failure_rate_k2"] == approx(1.0) and s["align_anything/accuracy_k2"] == approx(0.0)
    rows = [json.loads(x) for x in open(out / "align_anything.jsonl")]
    assert len(rows) == 2 and all(len(r["outputs"]) == 2 and len(r["samples"][0]) == 2 for r in rows)
    log = open(out / "evaluate.log").read()
    assert "too_long" in log and "unparsed judgment" in log


def test_tiny_score_only_rm_through_the_entry_point(tmp_path):
    """A tiny random score-only RM (scalar head) through `evaluate.main` with model.kind = rm: its
    scores in the JSONL are the model's (`stages.judging.rm_scores` on the same items), and every
    figure follows from them: pair accuracy from the score order, Pearson with the human scores."""
    import ml_collections
    from flax import nnx

    from grlhfv_jax import models
    from grlhfv_jax.data.tokenizer import train_tokenizer
    from grlhfv_jax.stages import judging

    image = dict(min_pixels=28 * 28, max_pixels=28 * 28, patch_size=14, merge_size=2, temporal_patch_size=2)
    judge = ScriptedJudge()
    specs = {
        "align_anything": align_anything(str(tmp_path), judge),
        "mllm_judge_score": mllm_judge_score(str(tmp_path), judge),
    }
    rm = tmp_path / "rm"
    train_tokenizer(["aq1 aa1 ab1 aq2 aa2 ab2 si1 sa1 si2 sa2"] * 20, str(rm), vocab_size=300)
    codec = encoding.Codec.from_dirs(str(rm), image)
    hf = demo.tiny_qwen2_vl(hidden=32, layers=1, heads=2, kv_heads=1, vision_depth=1, vision_dim=32)
    model = models.from_config(
        roles.model_config(ml_collections.ConfigDict({"hf_config": hf}), codec), rngs=nnx.Rngs(1), scalar_head=True
    )
    models.save_pretrained(model, str(rm))
    cfg_file = tmp_path / "eval_rm.py"
    cfg_file.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.root = {str(tmp_path)!r}\n"
        f"    c.model = dict(kind='rm', path={str(rm)!r})\n"
        f"    c.image = {image!r}\n"
        "    c.batch_rows = 4\n"
        "    c.max_len = 64\n"
        f"    c.benchmarks = {specs!r}\n"
        "    return c\n"
    )
    out = tmp_path / "out"
    assert evaluate.main(["evaluate", f"--config={cfg_file}", f"--workdir={out}"]) == 0
    s = json.load(open(out / "summary.json"))
    pairs = [json.loads(x) for x in open(out / "align_anything.jsonl")]
    points = [json.loads(x) for x in open(out / "mllm_judge_score.jsonl")]
    # the scores are the RM's: rm_scores on the same (question, image, response) items
    loaded = models.load_pretrained(str(rm), scalar_head=True)
    want = judging.rm_scores(
        loaded,
        codec,
        [("aq1", evaluate.decode(png(71)), "aa1"), ("aq1", evaluate.decode(png(71)), "ab1")],
        rows=4,
        max_len=64,
    )
    np.testing.assert_allclose(pairs[0]["scores"], want, rtol=1e-5, atol=1e-5)
    # accuracy: labels 1, 2; the verdict is the higher score (a tie is wrong)
    right = [
        float((r["scores"][0] > r["scores"][1]) if lab == 1 else (r["scores"][1] > r["scores"][0]))
        for r, lab in zip(pairs, (1, 2))
    ]
    assert s["align_anything/accuracy"] == approx(sum(right) / 2)
    assert "align_anything/position_consistency" not in s
    # Pearson of the RM's scores with the human scores 1, 2, 5, 3 (the 5th row's "n/a" is a bad label)
    assert [p["human"] for p in points] == [1.0, 2.0, 5.0, 3.0]
    assert s["mllm_judge_score/pearson"] == approx(pearson([1, 2, 5, 3], [p["score"] for p in points]))
    assert s["mllm_judge_score/parse_failure_rate"] == approx(0.0) and s["mllm_judge_score/bad_bad_label"] == 1


def test_a_variant_layout_through_field_overrides(tmp_path):
    """A VL-RewardBench copy in another layout (JSONL, other column names, images as paths next to
    the file) read through the config's field map and format: the same figures as the original."""
    judge = ScriptedJudge()
    os.makedirs(tmp_path / "variant")
    rows = []
    for n, (rid, resp, rank) in enumerate(
        (("wildvision_1", ["w1a", "w1b"], [0, 1]), ("mathverse_4", ["m4a", "m4b"], [1, 0]))
    ):
        save_png(str(tmp_path / "variant" / f"{n}.png"), 80 + n)
        rows.append(dict(uid=rid, prompt="q", answers=resp, rank=rank, img=f"{n}.png"))
    write_jsonl(str(tmp_path / "variant" / "vlrb.jsonl"), rows)
    judge.script("w1a", "w1b", 1, 1)  # right in both orders
    judge.script("m4a", "m4b", 1, 2)  # label 2: wrong in order 1, right in order 2
    spec = dict(
        path="variant/vlrb.jsonl",
        format="jsonl",
        fields=dict(id="uid", question="prompt", responses="answers", ranking="rank", image="img"),
    )
    s = evaluate.evaluate(
        eval_config(tmp_path, {"vl_rewardbench": spec}, voting_k=1), str(tmp_path / "out"), judge=judge
    )
    # order 1: [1, 0] -> 1/2, macro (general 1 + reasoning 0) / 2; order 2: [1, 1] -> 1, macro (1 + 1) / 2
    assert s["vl_rewardbench/accuracy"] == approx(0.75)
    assert s["vl_rewardbench/macro_accuracy"] == approx(((1 + 0) / 2 + (1 + 1) / 2) / 2)
    assert s["vl_rewardbench/items"] == 2 and s["vl_rewardbench/bad_total"] == 0
    assert "vl_rewardbench/accuracy_k1" not in s and not any(k.endswith("_k3") for k in s)
