"""data.sources: the world behind the interface the stages read, and its evaluation hooks."""

import numpy as np
import pytest

from grlhfv_jax.data import sources
from grlhfv_jax.data import world as W


class _Hooks:
    """Scores an answer by its length, per record: record k's answers score k + len(answer)."""

    def oracle_score(self, record, answer):
        return record["k"] + len(answer)


def test_oracle_scores_groups_answers_per_record():
    recs = [{"k": 10}, {"k": 20}]
    got = sources.oracle_scores(_Hooks(), recs, ["a", "bb", "ccc", "d"], per_record=2)
    np.testing.assert_array_equal(got, [11, 12, 23, 21])
    assert sources.oracle_scores(None, recs, ["a"]) is None  # a source without an oracle: no scores


@pytest.fixture(scope="module")
def world_source(tmp_path_factory):
    from grlhfv_jax.data import pipeline

    world = W.WorldConfig(sizes=tuple({**W.DEFAULT_SIZES, "grm_train": 12, "policy_test": 5}.items()))
    d = str(tmp_path_factory.mktemp("world"))
    pipeline.prepare(d, world, vocab_size=400)
    return sources.WorldSource(d, world)


def test_world_source_reads_the_world_and_its_truth(world_source):
    recs = world_source.records("policy_test")
    assert [r["id"] for r in recs] == [f"policy_test-{i:07d}" for i in range(5)]
    ds = world_source.dataset("grm_train", seed=3, batch_size=4)
    assert [len(ds[s]) for s in range(5)] == [4] * 5  # endless: past one epoch (12)
    assert [r["id"] for r in ds[1]] == [r["id"] for r in world_source.dataset("grm_train", seed=3, batch_size=4)[1]]
    r = recs[0]
    hooks = world_source.hooks
    assert hooks.oracle_score(r, r["answer"]) == W.oracle_score(r["scene"], r["question"], r["answer"]) == 1.0
    assert hooks.style("Maybe it is red.") == W.style_description("Maybe it is red.")
    with pytest.raises(ValueError):
        hooks.check_styles({"plain": -1.0})
    png = world_source.encode_image(r["image"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
