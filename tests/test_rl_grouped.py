"""Grouped comparison: plans, aggregators and diagnostics against hand-worked cases and an
independent numpy derivation."""

import math

import numpy as np
import pytest

from grlhfv_jax.rl import grouped as gr

# -------------------------------------------------------------------------------------- plan


def test_plan_both_and_one():
    both = gr.judging_plan(4)
    assert len(both) == 12 and len(set(both)) == 12
    assert set(both) == {(i, j) for i in range(4) for j in range(4) if i != j}
    one = gr.judging_plan(4, order="one")
    assert one == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_plan_skips_incomplete():
    assert gr.judging_plan(4, [True, False, True, True], order="one") == [(0, 2), (0, 3), (2, 3)]
    assert gr.judging_plan(3, [False, True, False]) == []
    assert gr.judging_plan(3, [False] * 3) == []
    assert gr.judging_plan(1) == []


def test_plan_random_seeded_subset():
    a = gr.judging_plan(10, order="random", num_pairs=7, seed=3)
    b = gr.judging_plan(10, order="random", num_pairs=7, seed=3)
    assert a == b and len(a) == 7
    unordered = {tuple(sorted(p)) for p in a}
    assert len(unordered) == 7 and all(i != j for i, j in a)
    assert len(gr.judging_plan(3, order="random", num_pairs=50)) == 3  # capped at C(3, 2)
    with pytest.raises(ValueError, match="order"):
        gr.judging_plan(3, order="sideways")


# --------------------------------------------------------------------------------- aggregation


def _paper_formula(scores_first, scores_second):
    """S(y_i) = 1/(2(n-1)) sum_{j != i} [s(y_i | y_i, y_j) + s(y_i | y_j, y_i)], straight from the
    paper. scores_first[i, j] = score of i when i is Response 1 vs j; scores_second[i, j] = score
    of j (Response 2) in that same call."""
    n = scores_first.shape[0]
    out = np.zeros(n)
    for i in range(n):
        tot = 0.0
        for j in range(n):
            if j != i:
                tot += scores_first[i, j] + scores_second[j, i]
        out[i] = tot / (2 * (n - 1))
    return out


def test_mean_matches_paper_formula_both_orders():
    rng = np.random.default_rng(0)
    n = 5
    s1 = rng.integers(1, 11, (n, n)).astype(float)
    s2 = rng.integers(1, 11, (n, n)).astype(float)
    judgments = {(i, j): (s1[i, j], s2[i, j]) for i, j in gr.judging_plan(n)}
    got = gr.aggregate(n, judgments, [True] * n)
    np.testing.assert_allclose(got, _paper_formula(s1, s2), rtol=0, atol=1e-12)


def test_mean_hand_case_with_incomplete_and_unparsed():
    # 0 vs 1: (8, 4) and (1 first: 5, 0 second: 7); 0 vs 2 unparsed one way, (6, 9) the other;
    # 3 incomplete (its judgments must be ignored even if present).
    judgments = {
        (0, 1): (8, 4),
        (1, 0): (5, 7),
        (0, 2): None,
        (2, 0): (9, 6),
        (1, 2): (3, 3),
        (0, 3): (1, 10),
        (3, 1): (10, 1),
    }
    got = gr.aggregate(4, judgments, [True, True, True, False])
    # 0 received 8, 7, 6 -> 7; 1 received 4, 5, 3 -> 4; 2 received 9, 3 -> 6; 3 -> 0
    np.testing.assert_allclose(got, [7.0, 4.0, 6.0, 0.0])
    diag = gr.judge_diagnostics(4, judgments, [True, True, True, False])
    assert diag["num_judgments"] == 5 and diag["num_unparsed"] == 1
    assert diag["parse_failure_rate"] == pytest.approx(1 / 5)
    assert diag["tie_rate"] == pytest.approx(1 / 4)


def test_edge_groups():
    # every response incomplete
    np.testing.assert_array_equal(gr.aggregate(3, {}, [False] * 3), np.zeros(3))
    # one complete response: nothing to compare
    np.testing.assert_array_equal(gr.aggregate(3, {}, [False, True, False]), np.zeros(3))
    assert gr.aggregate(3, {}, [False, True, False], no_comparison_value=5.0)[1] == 5.0
    # all judgments unparsed
    plan = gr.judging_plan(3)
    js = {p: None for p in plan}
    for m in ("mean", "bradley_terry"):
        np.testing.assert_array_equal(gr.aggregate(3, js, [True] * 3, method=m), np.zeros(3))
    np.testing.assert_array_equal(gr.aggregate(3, js, [True] * 3, method="win_rate"), np.full(3, 0.5))
    d = gr.judge_diagnostics(3, js, [True] * 3)
    assert d["parse_failure_rate"] == 1.0 and math.isnan(d["tie_rate"])
    # group of one
    np.testing.assert_array_equal(gr.aggregate(1, {}, [True]), [0.0])


def test_win_rate_hand_case():
    judgments = {(0, 1): (9, 2), (1, 0): (4, 4), (0, 2): None, (2, 1): (7, 1)}
    got = gr.aggregate(3, judgments, [True, True, True], method="win_rate")
    # 0: win, tie, unparsed -> (1 + .5 + .5) / 3; 1: loss, tie, loss -> .5/3; 2: .5, win -> 1.5/2
    np.testing.assert_allclose(got, [2 / 3, 0.5 / 3, 0.75])


def _bt_gradient(theta, wins, prior):
    """d/d theta_i of sum_{i<j} [w_ij log s(t_i - t_j) + w_ji log s(t_j - t_i)]
    + sum_i prior [log s(t_i) + log s(-t_i)]: written independently of the MM update."""
    sig = lambda x: 1 / (1 + np.exp(-x))
    n = len(theta)
    g = np.zeros(n)
    for i in range(n):
        for j in range(n):
            if i != j:
                g[i] += wins[i, j] - (wins[i, j] + wins[j, i]) * sig(theta[i] - theta[j])
        g[i] += prior * (1 - sig(theta[i])) - prior * sig(theta[i])
    return g


def test_win_rate_gives_position_verdicts_no_weight_and_mean_does():
    """The demo's stage 2 uses win_rate for this (configs/demo.py): with both orders judged, a pair
    the judge decides by position (the first answer wins in either order) gives each answer 1/2,
    whatever the scores; only a verdict that holds in both orders moves the rewards. The mean score
    lets the sizes of position verdicts through. Hand-worked, 3 answers:
    (0, 1): by position, scores 9-2 then 6-5; (0, 2) and (1, 2): 2 beats 0 and 1 in both orders."""
    judgments = {(0, 1): (9, 2), (1, 0): (6, 5), (0, 2): (3, 7), (2, 0): (8, 4), (1, 2): (2, 6), (2, 1): (7, 3)}
    complete = [True] * 3
    np.testing.assert_allclose(gr.aggregate(3, judgments, complete, "win_rate"), [0.25, 0.25, 1.0])
    # mean: answer 0 got 9, 5, 3, 4 -> 5.25; answer 1 got 2, 6, 2, 3 -> 3.25; answer 2: 7, 8, 6, 7 -> 7
    mean = gr.aggregate(3, judgments, complete, "mean")
    np.testing.assert_allclose(mean, [5.25, 3.25, 7.0])
    assert mean[0] - mean[1] == 2.0  # a gap between 0 and 1 that no consistent verdict supports


def test_bradley_terry_is_the_penalised_mle():
    rng = np.random.default_rng(1)
    n = 5
    judgments = {}
    wins = np.zeros((n, n))
    for i, j in gr.judging_plan(n):
        a, b = rng.integers(1, 11, 2)
        judgments[(i, j)] = (float(a), float(b))
        w = 0.5 if a == b else float(a > b)
        wins[i, j] += w
        wins[j, i] += 1 - w
    theta = gr.aggregate(n, judgments, [True] * n, method="bradley_terry", prior=0.1, iters=2000)
    np.testing.assert_allclose(_bt_gradient(theta, wins, 0.1), 0.0, atol=1e-6)
    # a response that beats everyone ranks first, and stays finite
    js = {(0, j): (10.0, 1.0) for j in range(1, 4)}
    js.update({(1, 2): (6.0, 5.0), (2, 3): (6.0, 5.0), (1, 3): (6.0, 5.0)})
    th = gr.aggregate(4, js, [True] * 4, method="bradley_terry")
    assert np.all(np.isfinite(th)) and list(np.argsort(-th)) == [0, 1, 2, 3]


def test_registry():
    gr.register_aggregator("first_only", lambda n, js, c: np.arange(n, dtype=float))
    np.testing.assert_array_equal(gr.aggregate(3, {}, [True] * 3, method="first_only"), [0, 1, 2])
    with pytest.raises(ValueError, match="registered"):
        gr.aggregate(3, {}, [True] * 3, method="nope")
    del gr.AGGREGATORS["first_only"]


# ---------------------------------------------------------------------------------- diagnostics


def test_position_consistency_and_cycles():
    # pair (0,1): consistent (0 wins both orders); (0,2): position-biased (Response 1 wins both);
    # (1,2): tie both ways -> consistent.
    js = {(0, 1): (8, 2), (1, 0): (3, 7), (0, 2): (9, 1), (2, 0): (9, 1), (1, 2): (5, 5), (2, 1): (4, 4)}
    d = gr.judge_diagnostics(3, js, [True] * 3)
    assert d["num_both_orders"] == 3 and d["position_consistency"] == pytest.approx(2 / 3)
    assert d["num_triples"] == 0  # (0,2) margins cancel and (1,2) is a tie: nothing decided

    # a clear cycle 0 > 1 > 2 > 0, plus a 4th response that loses to all (transitive triples)
    js = {(0, 1): (7, 3), (1, 2): (7, 3), (2, 0): (7, 3), (0, 3): (9, 1), (1, 3): (9, 1), (2, 3): (9, 1)}
    d = gr.judge_diagnostics(4, js, [True] * 4)
    assert d["num_triples"] == 4 and d["num_cycles"] == 1 and d["cycle_rate"] == 0.25
    assert math.isnan(d["position_consistency"])
    # excluding response 2 removes the cycle
    d = gr.judge_diagnostics(4, js, [True, True, False, True])
    assert d["num_triples"] == 1 and d["num_cycles"] == 0


def test_reward_length_correlation():
    rewards = np.array([1.0, 2.0, 3.0, 0.0])
    lengths = [10, 20, 35, 999]
    d = gr.judge_diagnostics(4, {}, [True, True, True, False], rewards=rewards, lengths=lengths)
    x, y = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 35.0])
    ref = ((x - x.mean()) * (y - y.mean())).sum() / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert d["reward_length_corr"] == pytest.approx(ref)
    assert math.isnan(gr.judge_diagnostics(2, {}, [True, False], rewards=[1, 0], lengths=[3, 4])["reward_length_corr"])
