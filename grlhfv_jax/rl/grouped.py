"""Grouped comparison (stage 2): which pairs the GRM judges, how judgments become per-response
rewards, and judge diagnostics. Plain numpy: a group holds a handful of responses.

A judgment is keyed by an ordered pair ``(i, j)``: response i shown as "Response 1", j as
"Response 2"; its value is ``(score_of_i, score_of_j)`` or ``None`` when the GRM output did not
parse to exactly two numbers (see `grm_reward.pair_scores`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Judgments = Mapping[tuple[int, int], tuple[float, float] | None]


# ------------------------------------------------------------------------------------- the plan


def judging_plan(
    n: int,
    complete: Sequence[bool] | None = None,
    order: str = "both",
    *,
    num_pairs: int | None = None,
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
        return [
            (unordered[c][1], unordered[c][0]) if f else unordered[c]
            for c, f in zip(sorted(int(c) for c in chosen), flips)
        ]
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
    complete, _, wins, _, _ = _pairwise(n, judgments, complete)  # wins[i, j]: (fractional) wins of i over j
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


# ----------------------------------------------- voting rules (the paper's Table 4 comparison)
#
# Shared choices (docs/algorithms.md, section 2): the candidates are the complete responses with
# at least one parsed judgment; a complete response without one gets ``no_comparison_value`` and
# an incomplete one 0, as under `mean`. Unparsed judgments are dropped. Rewards are in [0, 1].


def _pairwise(n, judgments, complete):
    """(complete, candidates mask, W, D, ballots) over parsed judgments between complete
    responses. W[i, j]: wins of i over j (tie = 1/2 each); D[i, j] = -D[j, i]: summed score
    differences s_i - s_j; ballots: one per parsed judgment, its tiers best first ([[i], [j]]
    when i won, [[i, j]] for a tie)."""
    complete, rows = _valid(n, judgments, complete)
    W, D, games = np.zeros((n, n)), np.zeros((n, n)), np.zeros(n)
    ballots = []
    for i, j, s in rows:
        if s is None:
            continue
        w = 0.5 if s[0] == s[1] else float(s[0] > s[1])
        W[i, j] += w
        W[j, i] += 1.0 - w
        D[i, j] += s[0] - s[1]
        D[j, i] -= s[0] - s[1]
        games[[i, j]] += 1
        ballots.append([[i, j]] if w == 0.5 else [[i], [j]] if w == 1.0 else [[j], [i]])
    return complete, complete & (games > 0), W, D, ballots


def _finish(scores, complete, candidates, no_comparison_value):
    out = np.where(candidates, scores, no_comparison_value)
    return np.where(complete, out, 0.0)


def aggregate_borda(n, judgments, complete, *, no_comparison_value: float = 0.0) -> np.ndarray:
    """Borda count on pairwise ballots: against each other candidate j, i scores its share of the
    pair's parsed judgments (W[i, j] / (W[i, j] + W[j, i]); 1/2 for a pair never parsed), the
    Borda points a full ranking would give; reward = points / (m - 1), m candidates. With every
    pair judged equally often this is the classical normalised Borda score."""
    complete, cand, W, _, _ = _pairwise(n, judgments, complete)
    games = W + W.T
    share = np.where(games > 0, W / np.maximum(games, 1e-300), 0.5)
    m = int(cand.sum())
    pts = (share * (cand[:, None] & cand[None, :] & ~np.eye(n, dtype=bool))).sum(1)
    return _finish(pts / max(m - 1, 1), complete, cand, no_comparison_value)


def _tier_scores(n, tiers_worst_first, m):
    """Normalised rank: tier positions 0 (worst) .. m - 1 (best), a tier sharing the mean of its
    positions, divided by m - 1 (a lone candidate: 1)."""
    out, pos = np.zeros(n), 0
    for tier in tiers_worst_first:
        out[list(tier)] = (pos + (len(tier) - 1) / 2) / max(m - 1, 1)
        pos += len(tier)
    return out


def aggregate_instant_runoff(n, judgments, complete, *, no_comparison_value: float = 0.0) -> np.ndarray:
    """Instant-runoff voting, each parsed judgment a ballot (winner first, loser second; a tie
    ranks both first). Each round a ballot gives one vote to its best-ranked remaining candidate
    (split equally among tied ones; a ballot with none remaining is exhausted); the candidates
    with the fewest votes are eliminated together, until all remaining have equal votes (joint
    winners). Reward = normalised elimination rank: tier positions from 0 (first out) to m - 1
    (winner), a tier eliminated together sharing the mean of its positions, / (m - 1).
    With every pair judged equally often (pairs "both" or "one"), a response that wins all its
    comparisons is never eliminated; with pairs "random" it may be."""
    complete, cand, _, _, ballots = _pairwise(n, judgments, complete)
    remaining = set(int(i) for i in np.flatnonzero(cand))
    m, tiers = len(remaining), []
    while remaining:
        votes = dict.fromkeys(remaining, 0.0)
        for ballot in ballots:
            for tier in ballot:
                live = [c for c in tier if c in remaining]
                if live:
                    for c in live:
                        votes[c] += 1.0 / len(live)
                    break
        low = min(votes.values())
        out = sorted(c for c, v in votes.items() if np.isclose(v, low, rtol=0, atol=1e-9))
        tiers.append(out)
        remaining -= set(out)
    return _finish(_tier_scores(n, tiers, m), complete, cand, no_comparison_value)


def aggregate_ranked_pairs(n, judgments, complete, *, no_comparison_value: float = 0.0) -> np.ndarray:
    """Ranked pairs (Tideman). A pair's majority and its strength come from the summed score
    differences D[i, j] (the GRM's scores, either order; the same outcome `judge_diagnostics`
    uses): every pair with D[i, j] > 0 is a victory of i over j; victories are locked in order of
    decreasing D (equal strengths: lower (i, j) first), each skipped if it would close a cycle.
    Reward = (number of candidates i reaches in the locked graph + 1/2 per candidate it is
    incomparable with) / (m - 1): 1 for the winner of a total order, 0 for the last."""
    complete, cand, _, D, _ = _pairwise(n, judgments, complete)
    idx = [int(i) for i in np.flatnonzero(cand)]
    wins = sorted((-D[i, j], i, j) for i in idx for j in idx if D[i, j] > 0)
    reach = np.eye(n, dtype=bool)  # reach[a, b]: a path a -> b of locked victories (or a == b)
    for _, i, j in wins:
        if not reach[j, i]:  # locking i -> j closes no cycle
            reach |= reach[:, i : i + 1] & reach[j : j + 1, :]
    m = len(idx)
    sub = cand[:, None] & cand[None, :] & ~np.eye(n, dtype=bool)
    beaten = (reach & sub).sum(1)
    incomparable = (~reach & ~reach.T & sub).sum(1)
    return _finish((beaten + 0.5 * incomparable) / max(m - 1, 1), complete, cand, no_comparison_value)


def aggregate_spectral(n, judgments, complete, *, prior: float = 0.5, no_comparison_value: float = 0.0) -> np.ndarray:
    """Spectral ranking (Rank Centrality, Negahban et al. 2017): a random walk over the m
    candidates that moves from i to j with probability a_ij / (m - 1), a_ij = (W[j, i] + prior) /
    (W[i, j] + W[j, i] + 2 prior) (j's share of the pair, `prior` virtual wins to each side, so an
    unbeaten response is not absorbing and a pair never parsed counts 1/2), staying otherwise.
    Its stationary distribution pi (the leading left eigenvector) ranks; reward = pi_i / max pi,
    in (0, 1], 1 for the top."""
    if prior <= 0:
        raise ValueError(f"spectral aggregator needs prior > 0, got {prior}")
    complete, cand, W, _, _ = _pairwise(n, judgments, complete)
    idx = np.flatnonzero(cand)
    m = len(idx)
    out = np.zeros(n)
    if m:
        w = W[np.ix_(idx, idx)]
        a = (w.T + prior) / (w + w.T + 2 * prior)
        np.fill_diagonal(a, 0.0)
        P = a / max(m - 1, 1)
        P[np.diag_indices(m)] = 1.0 - P.sum(1)
        vals, vecs = np.linalg.eig(P.T)
        pi = np.abs(np.real(vecs[:, int(np.argmin(np.abs(vals - 1.0)))]))
        out[idx] = pi / pi.max()
    return _finish(out, complete, cand, no_comparison_value)


AGGREGATORS: dict[str, Callable[..., np.ndarray]] = {
    "mean": aggregate_mean,
    "win_rate": aggregate_win_rate,
    "bradley_terry": aggregate_bradley_terry,
}


def register_aggregator(name: str, fn: Callable[..., np.ndarray]) -> None:
    """Add ``fn(n, judgments, complete, **kwargs) -> np.ndarray[n]`` under ``name``."""
    AGGREGATORS[name] = fn


for _name, _fn in (
    ("borda", aggregate_borda),
    ("instant_runoff", aggregate_instant_runoff),
    ("ranked_pairs", aggregate_ranked_pairs),
    ("spectral", aggregate_spectral),
):
    register_aggregator(_name, _fn)


def aggregate(n: int, judgments: Judgments, complete: Sequence[bool], method: str = "mean", **kwargs) -> np.ndarray:
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
    rewards: np.ndarray | None = None,
    lengths: Sequence[float] | None = None,
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


def rm_rewards(scores: np.ndarray, complete: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Score-only RM rewards [P, n]: the RM's score for complete answers; an incomplete answer gets
    the group's lowest complete score minus `margin` (the worst, as 0 is for GRM scores 1..10).

    A fixed 0 would not do: RM scores are unbounded, and where complete answers score below 0 the
    policy learns never to finish (seen in the demo)."""
    scores, complete = np.asarray(scores, np.float64), np.asarray(complete, bool)
    low = np.where(complete, scores, np.inf).min(axis=1, keepdims=True) - margin
    low = np.where(np.isfinite(low), low, 0.0)  # no complete answer: all equal, no signal
    return np.where(complete, scores, low)
