"""Running the GRM and the score-only RM on pairs: judgments, accuracy, position consistency."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import numpy as np

from grlhfv_jax import encoding, sharding
from grlhfv_jax.rl import grm_reward
from grlhfv_jax.rollout import Judge, SamplingParams, grm_judge
from grlhfv_jax.trainers.scoring import _filled_calls, score_batch


def grm_accuracy(
    judge: Judge, records: Sequence[dict], *, max_new_tokens: int, prefix: str = ""
) -> tuple[dict, list[dict]]:
    """Greedy judgments (any `rollout.Judge`) of every pair in both orders.

    accuracy: the paper's pair reward in the dataset's order (ties and unparsed count as wrong);
    accuracy_both: the same over both orders; position_consistency: share of pairs whose two
    orders parse, are not ties and pick the same response; accuracy_decided: the pair reward over
    the judgments (both orders) that parse and are not ties (ordering skill apart from ties);
    parse_failure, tie_rate over all judgments; accuracy_<pair type> (dataset order) when records
    carry `pair_type`. Returns (metrics, per-pair samples for the report)."""
    items = [(r["question"], r["image"], r["response_1"], r["response_2"]) for r in records]
    swapped = [(q, img, b, a) for q, img, a, b in items]
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    fwd, rev = judge.judge(items, greedy), judge.judge(swapped, greedy)
    if jax.process_count() > 1:  # each host judged its share of the records: figures over all of them
        keys = ("question", "response_1", "response_2", "overall_response", "pair_type")
        records = sharding.gather_objects([{k: r[k] for k in keys if k in r} for r in records])
        fwd, rev = sharding.gather_objects(fwd), sharding.gather_objects(rev)
    acc, acc_rev, consistent, fails, ties = [], [], [], 0, 0
    decided = []  # pair reward of the judgments (both orders) that parse and are not ties
    samples = []
    for r, t1, t2 in zip(records, fwd, rev):
        label = int(r["overall_response"])
        acc.append(grm_reward.pair_reward(t1, label))
        acc_rev.append(grm_reward.pair_reward(t2, grm_reward.swap_label(label)))
        s1, s2 = grm_reward.pair_scores(t1), grm_reward.pair_scores(t2)
        fails += (s1 is None) + (s2 is None)
        ties += (s1 is not None and s1[0] == s1[1]) + (s2 is not None and s2[0] == s2[1])
        decided += [c for c, s in ((acc[-1], s1), (acc_rev[-1], s2)) if s is not None and s[0] != s[1]]
        if s1 is not None and s2 is not None and s1[0] != s1[1] and s2[0] != s2[1]:
            consistent.append(float((s1[0] > s1[1]) == (s2[1] > s2[0])))
        else:
            consistent.append(0.0)
        samples.append(
            {
                "question": r["question"],
                "response_1": r["response_1"],
                "response_2": r["response_2"],
                "output": t1,
                "scores": s1,
                "preferred": label,
            }
        )
    n = max(len(records), 1)
    metrics = {
        f"{prefix}accuracy": float(np.mean(acc)) if acc else 0.0,
        f"{prefix}accuracy_both": float(np.mean(acc + acc_rev)) if acc else 0.0,
        f"{prefix}position_consistency": float(np.mean(consistent)) if consistent else 0.0,
        f"{prefix}accuracy_decided": float(np.mean(decided)) if decided else float("nan"),
        f"{prefix}parse_failure": fails / (2 * n),
        f"{prefix}tie_rate": ties / (2 * n),
        **by_pair_type(records, acc, f"{prefix}accuracy_"),
    }
    return metrics, samples


def by_pair_type(records: Sequence[dict], correct: Sequence[float], prefix: str) -> dict:
    """Mean of `correct` per record `pair_type` (minimal: only the image decides; style: the
    text decides; mixed), as {prefix + type: value}; empty when records carry no pair type."""
    out: dict[str, list] = {}
    for r, c in zip(records, correct):
        if r.get("pair_type"):
            out.setdefault(r["pair_type"], []).append(float(c))
    return {prefix + t: float(np.mean(v)) for t, v in sorted(out.items())}


def rm_scores(rm, codec, items: Sequence[tuple], *, rows: int, max_len: int) -> np.ndarray:
    """Score-only RM reward for each (question, image, response) item: [len(items)] float, in calls
    of `rows` items padded to `max_len` tokens; more than `rows` items: a short last call is filled
    with copies of the last item (scores dropped, as in `score_batch`): one compiled shape."""
    out = []
    for idx, real in _filled_calls(len(items), int(rows)):
        start = int(idx[0])
        ex = [codec.example(q, img, resp) for q, img, resp in items[start : start + real]]  # each item once
        b = encoding.batch([ex[i - start] for i in idx], codec, side="right", max_len=max_len)
        b.pop("valid")
        b.pop("loss_mask")
        out.append(score_batch(rm, b, rows=len(idx))[:real])  # one call of this chunk's rows
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def rm_accuracy(rm, codec, records, *, rows: int, max_len: int, prefix: str = "") -> dict:
    """Share of pairs where the RM scores the human-preferred response higher (ties wrong)."""
    items = [(r["question"], r["image"], r[k]) for r in records for k in ("response_1", "response_2")]
    s = rm_scores(rm, codec, items, rows=rows, max_len=max_len).reshape(-1, 2)
    if jax.process_count() > 1:  # each host scored its share of the records: figures over all of them
        s = sharding.gather_rows(s)
        records = sharding.gather_objects(
            [{k: r[k] for k in ("overall_response", "pair_type") if k in r} for r in records]
        )
    labels = np.array([int(r["overall_response"]) for r in records])
    pred = np.where(s[:, 0] > s[:, 1], 1, np.where(s[:, 1] > s[:, 0], 2, 0))
    return {
        f"{prefix}accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0,
        **by_pair_type(records, pred == labels, f"{prefix}accuracy_"),
    }


# ----------------------------------------------------------------------------- the GRM before and after RL


def eval_judge(grm, codec, sec) -> grm_judge.GRMJudge:
    """The GRM as a `rollout.Judge` for evaluation (weights as they are now)."""
    return grm_judge.GRMJudge(grm, codec, rows=int(sec.eval_rows), max_len=int(sec.max_len))


def evaluate_grm(grm, codec, sec, records_id, records_ood, prefix: str) -> tuple[dict, list]:
    judge = eval_judge(grm, codec, sec)
    m_id, samples = grm_accuracy(judge, records_id, max_new_tokens=sec.max_new_tokens, prefix=f"{prefix}_id_")
    m_ood, _ = grm_accuracy(judge, records_ood, max_new_tokens=sec.max_new_tokens, prefix=f"{prefix}_ood_")
    return {**m_id, **m_ood}, samples


def save_samples(workdir: str, records, samples, encode_image, limit: int = 8) -> None:
    """Writes a few judgments (with their images) for the report (process 0 alone)."""
    if not sharding.is_writer():
        return
    out = os.path.join(workdir, "samples")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "judgments.jsonl"), "w") as f:
        for k, (r, s) in enumerate(zip(records[:limit], samples[:limit])):
            name = f"judgment_{k}.png"
            with open(os.path.join(out, name), "wb") as g:
                g.write(encode_image(r["image"]))
            f.write(json.dumps(dict(s, image=name)) + "\n")


def _previous_summary(workdir: str, key: str) -> dict:
    """The `grm/sft_*` figures of an interrupted run of this stage, if it logged them."""
    path = os.path.join(workdir, "grm_rl", "sft_eval.json")
    if os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
        return found if key in found else {}
    return {}


def _rename(m: dict, tag: str) -> dict:
    """grm/<tag>_id_accuracy -> grm/accuracy_id (after RL) or grm/sft_accuracy_id (before)."""
    out = {}
    for k, v in m.items():
        split = "id" if f"{tag}_id_" in k else "ood"
        metric = k.split(f"{tag}_{split}_", 1)[1]
        key = f"grm/{metric}_{split}" if tag == "rl" else f"grm/sft_{metric}_{split}"
        out[key] = v
    return out


def grm_before_rl(grm, codec, sec, records_id, records_ood, workdir: str) -> dict:
    """The warm-start GRM's figures (`grm/sft_*`) before stage 1 trains it, written to
    workdir/grm_rl/sft_eval.json; a resumed run reads them back instead of measuring again."""
    done_before = _previous_summary(workdir, "grm/sft_accuracy_id")
    if done_before:  # resuming: the SFT model was evaluated before the interruption
        return done_before
    if not sec.eval_pairs:
        return {}
    before, _ = evaluate_grm(grm, codec, sec, records_id, records_ood, "grm/sft")
    summary = _rename(before, "sft")
    if sharding.is_writer():
        os.makedirs(os.path.join(workdir, "grm_rl"), exist_ok=True)
        with open(os.path.join(workdir, "grm_rl", "sft_eval.json"), "w") as f:
            json.dump(summary, f)
    print(f"[grm_rl] before RL: {json.dumps({k: round(v, 3) for k, v in summary.items()})}", flush=True)
    return summary


def grm_after_rl(grm, codec, sec, records_id, records_ood, workdir: str, *, encode_image) -> dict:
    """The trained GRM's figures (`grm/*_id`, `grm/*_ood`) and a few judgments for the report."""
    after, samples = evaluate_grm(grm, codec, sec, records_id, records_ood, "grm/rl")
    save_samples(workdir, records_id, samples, encode_image)
    return _rename(after, "rl")
