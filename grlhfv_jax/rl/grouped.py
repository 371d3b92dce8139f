"""Grouped comparison (stage 2): which pairs the GRM judges, how judgments become per-response
rewards, and judge diagnostics. Plain numpy: a group holds a handful of responses.

A judgment is keyed by an ordered pair ``(i, j)``: response i shown as "Response 1", j as
"Response 2"; its value is ``(score_of_i, score_of_j)`` or ``None`` when the GRM output did not
parse to exactly two numbers (see `grm_reward.pair_scores`).
"""
from __future__ import annotations

import itertools
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

Judgments = Mapping[tuple[int, int], Optional[tuple[float, float]]]


# ------------------------------------------------------------------------------------- the plan

def judging_plan(
    n: int,
    complete: Optional[Sequence[bool]] = None,
    order: str = "both",
    *,
    num_pairs: Optional[int] = None,
    seed: int = 0,
) -> list[tuple[int, int]]:
    """Ordered pairs ``(i, j)`` to judge among the complete responses of a group of ``n``.

    order "both": every ordered pair, n(n-1) calls (method.md default).
    order "one": each unordered pair once, lower index first, C(n, 2) calls (the paper's code).
    order "random": ``num_pairs`` unordered pairs drawn without replacement (seeded), each shown
    in a random order; for large n.
    """
    complete = np.ones(n, bool) if complete is None else np.asarray(complete, bool)
    if complete.shape != (n,):
        raise ValueError(f"complete has shape {complete.shape}, expected ({n},)")
    idx = [int(i) for i in np.flatnonzero(complete)]
    unordered = list(itertools.combinations(idx, 2))
    if order == "both":
        return [p for a, b in unordered for p in ((a, b), (b, a))]
    if order == "one":
        return unordered
    if order == "random":
        if num_pairs is None or num_pairs < 0:
            raise ValueError("order='random' needs num_pairs >= 0")
        rng = np.random.default_rng(seed)
        k = min(num_pairs, len(unordered))
        chosen = rng.choice(len(unordered), size=k, replace=False) if k else []
        flips = rng.random(k) < 0.5
        return [(unordered[c][1], unordered[c][0]) if f else unordered[c]
                for c, f in zip(sorted(int(c) for c in chosen), flips)]
    raise ValueError(f"unknown judging order {order!r}; choose 'both', 'one' or 'random'")


# --------------------------------------------------------------------------------- aggregators

def _valid(n: int, judgments: Judgments, complete) -> tuple[np.ndarray, list]:
    """(complete mask, [(i, j, s_i, s_j or None)]) over judgments between complete responses."""
    complete = np.asarray(complete, bool)
    if complete.shape != (n,):
        raise ValueError(f"complete has shape {complete.shape}, expected ({n},)")
    rows = []
    for (i, j), s in judgments.items():
        if not (0 <= i < n and 0 <= j < n) or i == j:
            raise ValueError(f"judgment key {(i, j)} is not an ordered pair of two of {n} responses")
        if complete[i] and complete[j]:
            rows.append((i, j, None if s is None else (float(s[0]), float(s[1]))))
    return complete, rows


def aggregate_mean(n, judgments, complete, *, no_comparison_value: float = 0.0) -> np.ndarray:
    """The paper's S(y_i): mean of the scores y_i received over its parsed comparisons (either
    position). A complete response with no parsed comparison gets ``no_comparison_value``."""
    complete, rows = _valid(n, judgments, complete)
    total, count = np.zeros(n), np.zeros(n)
    for i, j, s in rows:
        if s is None:
            continue
        total[i] += s[0]
        total[j] += s[1]
        count[i] += 1
        count[j] += 1
    out = np.where(count > 0, total / np.maximum(count, 1), no_comparison_value)
    return np.where(complete, out, 0.0)


def aggregate_win_rate(n, judgments, complete, *, no_comparison_value: float = 0.0) -> np.ndarray:
    """Fraction of its comparisons a response won; a tie or an unparsed judgment counts 0.5."""
    complete, rows = _valid(n, judgments, complete)
    wins, count = np.zeros(n), np.zeros(n)
    for i, j, s in rows:
        w = 0.5 if s is None or s[0] == s[1] else float(s[0] > s[1])
        wins[i] += w
        wins[j] += 1.0 - w
        count[i] += 1
        count[j] += 1
    out = np.where(count > 0, wins / np.maximum(count, 1), no_comparison_value)
    return np.where(complete, out, 0.0)


def aggregate_bradley_terry(
    n, judgments, complete, *, prior: float = 0.1, iters: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """Bradley-Terry log-strengths fitted by MM (Hunter 2004) on the parsed judgments.

    Win = 1, tie = 1/2 to each. The prior is ``prior`` virtual wins and ``prior`` virtual losses
    of every response against a fixed anchor of strength 1, which keeps the fit finite (an
    unbeaten response, a response with no comparisons -> log-strength 0). Incomplete -> 0.
    """
    complete, rows = _valid(n, judgments, complete)
    wins = np.zeros((n, n))  # wins[i, j]: (fractional) wins of i over j
    for i, j, s in rows:
        if s is None:
            continue
        w = 0.5 if s[0] == s[1] else float(s[0] > s[1])
        wins[i, j] += w
        wins[j, i] += 1.0 - w
    games = wins + wins.T
    w_total = wins.sum(1) + prior
    p = np.ones(n)
    for _ in range(iters):
        denom = (games / (p[:, None] + p[None, :])).sum(1) + 2 * prior / (p + 1.0)
        new = w_total / denom
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    return np.where(complete, np.log(p), 0.0)


AGGREGATORS: dict[str, Callable[..., np.ndarray]] = {
    "mean": aggregate_mean,
    "win_rate": aggregate_win_rate,
    "bradley_terry": aggregate_bradley_terry,
}


def register_aggregator(name: str, fn: Callable[..., np.ndarray]) -> None:
    """Add ``fn(n, judgments, complete, **kwargs) -> np.ndarray[n]`` under ``name``."""
    AGGREGATORS[name] = fn


def aggregate(n: int, judgments: Judgments, complete: Sequence[bool], method: str = "mean",
              **kwargs) -> np.ndarray:
    """Per-response rewards ``[n]`` float64 from a group's judgments (method by name)."""
    if method not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {method!r}; registered: {sorted(AGGREGATORS)}")
    return np.asarray(AGGREGATORS[method](n, judgments, complete, **kwargs), np.float64)


# -------------------------------------------------------------------------------- diagnostics

def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def judge_diagnostics(
    n: int,
    judgments: Judgments,
    complete: Sequence[bool],
    *,
    rewards: Optional[np.ndarray] = None,
    lengths: Optional[Sequence[float]] = None,
) -> dict[str, float]:
    """Judge-quality numbers for one group. Rates are NaN when undefined; the ``num_*`` counts
    let a caller pool rates over many groups (sum the counts, then divide).

    - parse_failure_rate = num_unparsed / num_judgments (judgments between complete responses)
    - tie_rate = num_ties / num_parsed
    - position_consistency = num_consistent / num_both_orders: over unordered pairs judged and
      parsed in both orders, the fraction whose outcome (i wins, j wins, tie) is the same
    - cycle_rate = num_cycles / num_triples: over triples of complete responses whose three
      pairwise outcomes are all decided (sum of score differences over the pair's parsed
      judgments is non-zero), the fraction that are intransitive (a > b > c > a)
    - reward_length_corr: Pearson correlation of ``rewards`` with ``lengths`` over complete
      responses (needs both)
    """
    complete, rows = _valid(n, judgments, complete)
    parsed = [(i, j, s) for i, j, s in rows if s is not None]
    num_ties = sum(s[0] == s[1] for _, _, s in parsed)

    outcome = {(i, j): int(np.sign(s[0] - s[1])) for i, j, s in parsed}  # +1: i won
    both = [(i, j) for (i, j) in outcome if i < j and (j, i) in outcome]
    consistent = sum(outcome[(i, j)] == -outcome[(j, i)] for i, j in both)

    margin = np.zeros((n, n))  # antisymmetric: summed score differences, i over j
    for i, j, s in parsed:
        margin[i, j] += s[0] - s[1]
        margin[j, i] -= s[0] - s[1]
    sign = np.sign(margin)
    triples = cycles = 0
    for a, b, c in itertools.combinations(np.flatnonzero(complete), 3):
        ab, bc, ca = sign[a, b], sign[b, c], sign[c, a]
        if ab != 0 and bc != 0 and ca != 0:
            triples += 1
            cycles += int(ab == bc == ca)

    def rate(num, den):
        return float(num) / den if den else float("nan")

    corr = float("nan")
    if rewards is not None and lengths is not None:
        r = np.asarray(rewards, np.float64)[complete]
        ln = np.asarray(lengths, np.float64)[complete]
        corr = _pearson(r, ln)

    return {
        "num_judgments": float(len(rows)),
        "num_unparsed": float(len(rows) - len(parsed)),
        "num_parsed": float(len(parsed)),
        "num_ties": float(num_ties),
        "num_both_orders": float(len(both)),
        "num_consistent": float(consistent),
        "num_triples": float(triples),
        "num_cycles": float(cycles),
        "parse_failure_rate": rate(len(rows) - len(parsed), len(rows)),
        "tie_rate": rate(num_ties, len(parsed)),
        "position_consistency": rate(consistent, len(both)),
        "cycle_rate": rate(cycles, triples),
        "reward_length_corr": corr,
    }
