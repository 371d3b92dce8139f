"""The voting-rule aggregators of rl/grouped.py (the paper's Table 4 comparison): hand-worked
groups for each, then properties shared by all. A judgment (i, j): (s_i, s_j) shows i first."""

import itertools

import numpy as np
import pytest

from grlhfv_jax import config as config_schema
from grlhfv_jax.rl import grouped

NEW = ("borda", "instant_runoff", "ranked_pairs", "spectral")
ALL3 = [True] * 3


def agg(method, n, judgments, complete=None, **kw):
    return grouped.aggregate(n, judgments, [True] * n if complete is None else complete, method, **kw)


def test_registered_by_name():
    for name in NEW:
        assert name in grouped.AGGREGATORS
    with pytest.raises(ValueError, match="borda"):
        grouped.aggregate(2, {}, [True, True], "no_such_rule")


def test_borda_hand_worked():
    # pair (0,1): 0 wins 8-3, then a 5-5 tie -> W01 = 1.5, W10 = 0.5: shares 0.75 / 0.25
    # pair (0,2): 2 wins 6-2, the other order unparsed (dropped)   -> shares 0 / 1
    # pair (1,2): 1 wins 7-4 and 9-3                                -> shares 1 / 0
    # reward = sum of shares / (m - 1): 0: (0.75 + 0)/2, 1: (0.25 + 1)/2, 2: (1 + 0)/2
    j = {(0, 1): (8, 3), (1, 0): (5, 5), (0, 2): (2, 6), (2, 0): None, (1, 2): (7, 4), (2, 1): (3, 9)}
    np.testing.assert_allclose(agg("borda", 3, j), [0.375, 0.625, 0.5])
    # (win_rate counts the unparsed judgment 1/2 and weighs per judgment: 0 gets 2/4 there)
    np.testing.assert_allclose(agg("win_rate", 3, j)[0], 0.5)
    # a pair never judged counts 1/2: 0 beat 1, 1 beat 2, (0, 2) unjudged
    # 0: (1 + 1/2)/2, 1: (0 + 1)/2, 2: (1/2 + 0)/2
    np.testing.assert_allclose(agg("borda", 3, {(0, 1): (9, 1), (1, 2): (9, 1)}), [0.75, 0.5, 0.25])


def test_instant_runoff_hand_worked():
    # ballots (winner > loser): 0>1, 0>2, 3>0, 1>2, 1>3, 2>3
    # round 1 first choices: 0: 2, 1: 2, 2: 1, 3: 1 -> 2 and 3 (fewest, tied) out together,
    #   positions 0 and 1 -> each (0 + 1)/2 / 3 = 1/6
    # round 2 among {0, 1}: 0>1, 0>2 -> 0; 3>0 transfers to 0; 1>2, 1>3 -> 1; 2>3 exhausted
    #   -> 0: 3, 1: 2: 1 out at position 2 -> 2/3; 0 wins -> 1
    # (Borda would tie 0 and 1: two wins each; the transfer from 3's ballot decides here)
    win = (7, 2)
    j = {(0, 1): win, (0, 2): win, (3, 0): win, (1, 2): win, (1, 3): win, (2, 3): win}
    np.testing.assert_allclose(agg("instant_runoff", 4, j), [1, 2 / 3, 1 / 6, 1 / 6])
    np.testing.assert_allclose(agg("borda", 4, j)[:2], [2 / 3, 2 / 3])
    # a Condorcet cycle, one ballot each: every round all tie -> joint winners, mean position 1/2
    np.testing.assert_allclose(agg("instant_runoff", 3, {(0, 1): win, (1, 2): win, (2, 0): win}), [0.5] * 3)
    # a tie ballot splits its vote: 0 ~ 1 (5-5) and 0 > 2, 1 > 2 -> 0: 1.5, 1: 1.5, 2: 0
    # -> 2 out (0); 0 and 1 tie on 1.5 -> joint winners at positions 1, 2 -> 0.75 each
    np.testing.assert_allclose(agg("instant_runoff", 3, {(0, 1): (5, 5), (0, 2): win, (1, 2): win}), [0.75, 0.75, 0])


def test_ranked_pairs_hand_worked():
    # a Condorcet cycle 0 > 1 > 2 > 0 by score margins D: D01 = 9-2 = 7, D12 = 8-4 = 4, D20 = 6-5 = 1
    # lock 0>1 (7), lock 1>2 (4), skip 2>0 (1: closes the cycle) -> order 0 > 1 > 2 -> 1, 1/2, 0
    np.testing.assert_allclose(agg("ranked_pairs", 3, {(0, 1): (9, 2), (1, 2): (8, 4), (0, 2): (5, 6)}), [1, 0.5, 0])
    # the same cycle, strengths reordered: D20 = 9-1 = 8 > D01 = 7 > D12 = 4
    # lock 2>0, lock 0>1, skip 1>2 -> order 2 > 0 > 1
    np.testing.assert_allclose(agg("ranked_pairs", 3, {(0, 1): (9, 2), (1, 2): (8, 4), (0, 2): (1, 9)}), [0.5, 0, 1])
    # margins add over both orders: (0,1) 6-4 then (1,0) 7-4 -> D01 = 2 - 3 = -1: 1 beats 0;
    # 2 ties 0 in sum (5-5) and is never compared with 1 -> 2 is incomparable with both: 1/2;
    # 1 reaches 0 (1) + incomparable with 2 (1/2) -> 0.75; 0 reaches nobody -> 1/2 of 1/2 = 0.25
    np.testing.assert_allclose(
        agg("ranked_pairs", 3, {(0, 1): (6, 4), (1, 0): (7, 4), (0, 2): (5, 5)}), [0.25, 0.75, 0.5]
    )


def test_spectral_hand_worked():
    # two responses, 0 beats 1 in both orders; prior 0.5 -> W01 = 2:
    # move 0->1 w.p. (0 + .5)/(2 + 1) = 1/6, 1->0 w.p. 5/6; balance pi0/6 = 5 pi1/6 -> pi = (5, 1)/6
    np.testing.assert_allclose(agg("spectral", 2, {(0, 1): (9, 1), (1, 0): (1, 9)}), [1, 0.2])
    # a transitive triple 0 > 1 > 2, each pair 2-0 in both orders; winner's share 5/6, loser's 1/6;
    # steps divided by m - 1 = 2:
    #   P = [[10, 1, 1], [5, 6, 1], [5, 5, 2]] / 12
    # pi P = pi: 2 pi0 = 5 pi1 + 5 pi2, 6 pi1 = pi0 + 5 pi2, 10 pi2 = pi0 + pi1 -> pi ∝ (55, 15, 7)
    j = {(0, 1): (9, 1), (1, 0): (1, 9), (0, 2): (9, 1), (2, 0): (1, 9), (1, 2): (9, 1), (2, 1): (1, 9)}
    np.testing.assert_allclose(agg("spectral", 3, j), [1, 15 / 55, 7 / 55])
    # a cycle is symmetric: all equal
    np.testing.assert_allclose(agg("spectral", 3, {(0, 1): (9, 1), (1, 2): (9, 1), (2, 0): (9, 1)}), [1, 1, 1])
    with pytest.raises(ValueError, match="prior"):
        agg("spectral", 2, {(0, 1): (9, 1)}, prior=0.0)


def _random_group(rng, n, order, winner=None, complete=None):
    """Judgments over `judging_plan(n, order)` of all n (incomplete ones included on purpose):
    scores in 1..9 with ties, 1 in 6 unparsed; `winner` scores 10 against 1..9 in each of its."""
    j = {}
    for a, b in grouped.judging_plan(n, None, order):
        if winner in (a, b):
            lo = int(rng.integers(1, 10))
            j[(a, b)] = (10, lo) if a == winner else (lo, 10)
        elif rng.random() < 1 / 6:
            j[(a, b)] = None
        else:
            j[(a, b)] = tuple(int(x) for x in rng.integers(1, 10, 2))
    return j


@pytest.mark.parametrize("order", ["both", "one"])
def test_a_response_winning_every_comparison_gets_the_top_reward(order):
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(2, 7))
        w = int(rng.integers(n))
        j = _random_group(rng, n, order, winner=w)
        for name in NEW + ("mean", "win_rate", "bradley_terry"):
            r = agg(name, n, j)
            assert r[w] == r.max() and (r[np.arange(n) != w] < r[w]).all(), (name, trial, j, r)
            if name in NEW:
                assert r[w] == 1.0 and (0 <= r).all() and (r <= 1).all(), (name, r)


def test_incomplete_responses_get_zero_and_are_never_compared():
    rng = np.random.default_rng(1)
    for trial in range(40):
        n = int(rng.integers(3, 7))
        complete = rng.random(n) < 0.7
        j = _random_group(rng, n, "both")
        kept = {k: v for k, v in j.items() if complete[k[0]] and complete[k[1]]}
        for name in NEW:
            r = agg(name, n, j, complete)
            np.testing.assert_array_equal(r, agg(name, n, kept, complete), err_msg=name)
            assert (r[~complete] == 0).all(), name


def test_no_parsed_comparison_gets_no_comparison_value():
    # 2 is complete but its only judgments did not parse; 3 is incomplete
    j = {(0, 1): (8, 2), (1, 0): (3, 6), (0, 2): None, (2, 1): None, (3, 0): (10, 1)}
    for name in NEW:
        r = agg(name, 4, j, [True, True, True, False], no_comparison_value=-1.0)
        assert r[2] == -1.0 and r[3] == 0.0 and r[0] == 1.0 and r[1] < 1.0, (name, r)
        np.testing.assert_array_equal(agg(name, 3, {}, ALL3), [0, 0, 0])


def test_relabelling_the_responses_relabels_the_rewards():
    """No rule looks at indices except ranked pairs' tie order among equal strengths; with
    distinct margins a permutation of the responses permutes the rewards."""
    rng = np.random.default_rng(2)
    n = 5
    j = {k: tuple(float(x) for x in rng.random(2) * 10) for k in itertools.permutations(range(n), 2)}
    perm = rng.permutation(n)
    pj = {(int(perm[a]), int(perm[b])): v for (a, b), v in j.items()}
    for name in NEW:
        r, pr = agg(name, n, j), agg(name, n, pj)
        np.testing.assert_allclose(pr[perm], r, err_msg=name)


def test_config_accepts_the_new_names():
    """The demo config's policy_rl.aggregator validates with each new name (config.validate
    checks the key against the registry) and an unknown name still fails, naming the key."""
    import importlib.util
    import os

    from grlhfv_jax.config import ConfigError

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")
    spec = importlib.util.spec_from_file_location("cfg_demo_aggregators", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in NEW + ("no_such_rule",):
        config = module.get_config("smoke")
        config.policy_rl.aggregator = name
        if name == "no_such_rule":
            with pytest.raises(ConfigError, match="aggregator"):
                config_schema.validate(config)
        else:
            assert config_schema.validate(config).policy_rl.aggregator == name
