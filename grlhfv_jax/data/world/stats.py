"""Text-only baselines and world statistics (how much the text alone tells)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .answers import kind_of_question, sample_answer
from .config import KINDS, PAIR_TYPES, WorldConfig
from .oracle import oracle_score
from .records import make_record
from .scenes import Scene

# ---------------------------------------------------------------------------------------------
# Text-only baselines (how much a judge that cannot see the image can get right).


def _text_features(text: str, vocab: Mapping[str, int]) -> np.ndarray:
    v = np.zeros(len(vocab) + 1, np.float64)
    for w in re.findall(r"[a-z]+|\d+", text.lower()):
        if w in vocab:
            v[vocab[w]] += 1.0
    v[-1] = len(text.split()) / 10.0
    return v


def text_only_baselines(
    train: list[Mapping[str, Any]], test: list[Mapping[str, Any]], steps: int = 150, lr: float = 1.0
) -> dict[str, float]:
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
        "noiseless_oracle_accuracy_id": float(
            np.mean([(1 if r["oracle_1"] > r["oracle_2"] else 2) == r["overall_response"] for r in tid])
        ),
        "answer_words_mean": float(np.mean(lens)),
        "answer_words_max": int(np.max(lens)),
        "oracle_mean_by_style": {k: float(np.mean(v)) for k, v in by_style.items()},
        "text_only_id": text_only_baselines(train, tid),
        "text_only_ood": text_only_baselines(train, tood),
        "text_only_id_by_pair_type": {
            t: text_only_baselines(train, [r for r in tid if r["pair_type"] == t])
            for t in PAIR_TYPES
            if any(r["pair_type"] == t for r in tid)
        },
    }
