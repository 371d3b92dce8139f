"""Sampler -> trainer glue (stages/learner.py): row layout, images per row, cut responses, and a
GRPO loop on a tiny Qwen2-VL that must learn a trivially learnable reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grlhfv_jax import config as config_schema
from grlhfv_jax import models
from grlhfv_jax.config import sections
from grlhfv_jax.models.qwen2_vl import QwenImages
from grlhfv_jax.rollout import GenerationOutput, generate, group_sampling
from grlhfv_jax.trainers import grpo as learner
from grlhfv_jax.trainers import loop, scoring, steps
from grlhfv_jax.trainers import rewards as trainer_rewards
from tiny_models import make_batch, tiny_hf_config  # tests/ is on sys.path

IMG = 9  # image token id in these hand-made rows


@pytest.fixture(scope="module")
def hf():
    """The tiny Qwen2-VL's config (tiny_models: the vocabulary of 128, image token 100)."""
    return tiny_hf_config("qwen2_vl").to_dict()


def _copies(model):
    """A function returning, on each call, a new copy of `model` (its own parameter arrays: the train
    steps donate them)."""
    graphdef, state = nnx.split(model)
    return lambda: nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


@pytest.fixture(scope="module")
def fresh_model(hf):
    """`fresh_model()`: a new copy of the tiny Qwen2-VL initialised from nnx.Rngs(0), built once for
    the module."""
    return _copies(models.from_config(hf, rngs=nnx.Rngs(0)))


def _batch():
    # row 0: one image of 2 tokens (8 patches at merge 2), row 1: one image of 1 token (4 patches)
    ids = np.array([[0, 5, IMG, IMG, 6], [0, 0, 5, IMG, 6]], np.int32)
    grid = np.array([[1, 2, 4], [1, 2, 2]], np.int32)
    pv = np.arange(12, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32), "pixel_values": pv, "image_grid_thw": grid}


def test_repeat_and_select_rows_carry_each_rows_images():
    b = _batch()
    rep = learner.repeat_rows(b, 2, QwenImages(IMG, 2))
    np.testing.assert_array_equal(rep["input_ids"], b["input_ids"][[0, 0, 1, 1]])
    np.testing.assert_array_equal(rep["image_grid_thw"], b["image_grid_thw"][[0, 0, 1, 1]])
    expect = np.concatenate(
        [b["pixel_values"][:8], b["pixel_values"][:8], b["pixel_values"][8:], b["pixel_values"][8:]]
    )
    np.testing.assert_array_equal(rep["pixel_values"], expect)
    sel = learner.select_rows(rep, np.array([2, 1]), QwenImages(IMG, 2))
    np.testing.assert_array_equal(sel["pixel_values"], np.concatenate([b["pixel_values"][8:], b["pixel_values"][:8]]))
    np.testing.assert_array_equal(sel["image_grid_thw"], b["image_grid_thw"][[1, 0]])


def test_training_rows_layout_and_cut_at_banned_tokens():
    b = _batch()
    gen = GenerationOutput(
        tokens=np.array([[7, 2, 0], [7, IMG, 2]]),
        logprobs=np.full((2, 3), -0.5, np.float32),
        lengths=np.array([2, 3]),
        finished=np.array([True, True]),
    )
    cut = group_sampling.cut_at_tokens(gen, [IMG])
    np.testing.assert_array_equal(cut.lengths, [2, 1])
    np.testing.assert_array_equal(cut.finished, [True, False])
    np.testing.assert_array_equal(cut.logprobs, [[-0.5, -0.5, -0.5], [-0.5, 0, 0]])
    rows = learner.training_rows(b, cut.tokens, cut.lengths, pad_id=0)
    np.testing.assert_array_equal(rows["input_ids"], [[0, 5, IMG, IMG, 6, 7, 2, 0], [0, 0, 5, IMG, 6, 7, 0, 0]])
    np.testing.assert_array_equal(rows["attention_mask"], [[0, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["response_mask"], [[0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 0, 0]])


def test_grpo_loop_learns_a_learnable_reward_on_tiny_qwen2_vl(fresh_model):
    """Reward = share of a row's tokens with id < 64 (half the vocabulary; about 0.5 at the start):
    GRPO through the sampler and `grpo_update` must raise it."""
    model, ref = fresh_model(), fresh_model()
    from grlhfv_jax.rl import optim

    tx, sched = optim.make_optimizer(learning_rate=1e-2, total_steps=100, warmup_steps=0, weight_decay=0.0)
    state = steps.TrainState(model, tx, sched)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, (4, 6)).astype(np.int32)
    prompts = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    cfg = steps.GRPOConfig(kl_coef=0.0)
    means = []
    for step in range(8):
        gen = generate(state.model, prompts, max_new_tokens=4, temperature=1.0, num_samples=8, rng=jax.random.key(step))
        tokens = np.asarray(gen.tokens)
        rewards = (tokens < 64).mean(axis=1).reshape(4, 8)
        means.append(rewards.mean())
        learner.grpo_update(state, ref, prompts, gen, rewards, pad_id=0, cfg=cfg, mini_batches=2)
    assert np.mean(means[-2:]) > np.mean(means[:2]) + 0.2, means


def test_freeze_keeps_the_vision_tower_fixed_and_trains_the_rest(fresh_model):
    from tiny_models import make_batch  # tests/ is on sys.path

    model = fresh_model()
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    opt = config_schema.typed_section(sections.OPTIMIZER, {"lr": 1e-2, "warmup_ratio": 0.0, "freeze": ["visual"]})
    state = loop.make_train_state(model, opt, 10)
    raw = make_batch([[[5, 6], (1, 4, 4), [7, 8, 9]], [(1, 2, 4), [10, 11, 12, 13]]], pad_side="right")
    batch = {k: raw[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    batch["loss_mask"] = np.asarray(batch["attention_mask"])
    steps.sft_step(state, batch)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat_b = dict(jax.tree_util.tree_flatten_with_path(before)[0])
    changed = {
        jax.tree_util.keystr(p): not np.array_equal(flat_b[p], np.asarray(v))
        for p, v in jax.tree_util.tree_flatten_with_path(after)[0]
    }
    vision = [k for k in changed if k.startswith("['visual']")]
    assert vision and not any(changed[k] for k in vision)
    assert all(changed[k] for k in changed if "['model']['layers']" in k and "kernel" in k)


def test_rm_rewards_rank_incomplete_answers_last():
    from grlhfv_jax.rl.grouped import rm_rewards

    scores = np.array([[-3.0, -1.0, 5.0], [2.0, 7.0, 1.0]])
    complete = np.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(rm_rewards(scores, complete), [[-3.0, -1.0, -4.0], [0.0, 0.0, 0.0]])


def test_rl_schedule_spans_all_rl_steps_with_mini_batches(fresh_model):
    """Two optimizer updates per RL step: the learning rate must not reach zero halfway (the
    schedule counts updates, steps x mini_batches). Warm-up 0 + cosine: lr(u) = lr0 (1 + cos(pi u / U)) / 2."""
    model = fresh_model()
    sec = config_schema.typed_section(sections.OPTIMIZER, {"lr": 1e-3, "warmup_ratio": 0.0}).replace(
        steps=10, mini_batches=2
    )
    state = loop.make_rl_train_state(model, sec)
    for u in (0, 10, 15, 19):  # update u happens in RL step u // 2
        want = 1e-3 * (1 + np.cos(np.pi * u / 20)) / 2
        assert float(state.schedule(u)) == pytest.approx(want, rel=1e-5, abs=1e-9), u
    assert float(state.schedule(10)) == pytest.approx(5e-4, rel=1e-5)  # RL step 5 of 10: half the peak


class CannedJudge:
    """A test double of the `rollout.Judge` protocol: hands out prepared texts call by call and
    records what it was asked (what a remote judge would receive)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def judge(self, items, params):
        self.calls.append((list(items), params))
        return self.answers.pop(0)

    def judge_groups(self, groups, params):
        self.calls.append((list(groups), params))
        return self.answers.pop(0)


def test_grm_accuracy_metrics_on_canned_judgments():
    """grm_accuracy's bookkeeping on hand-made judgments from a test-double judge."""
    from grlhfv_jax.rollout import Judge
    from grlhfv_jax.stages import judging

    recs = [
        dict(question="q", image=None, response_1=f"a{i}", response_2=f"b{i}", overall_response=y, pair_type=t)
        for i, (y, t) in enumerate([(1, "style"), (2, "style"), (1, "minimal"), (2, "mixed")])
    ]
    # dataset order, then swapped order (label flips): per pair (forward, reverse)
    fwd = [r"Scores: \boxed{7, 2}", r"Scores: \boxed{7, 2}", r"Scores: \boxed{3, 3}", "no scores"]
    rev = [r"Scores: \boxed{2, 7}", r"Scores: \boxed{7, 2}", r"Scores: \boxed{1, 9}", r"Scores: \boxed{4, 8}"]
    judge = CannedJudge(fwd, rev)
    assert isinstance(judge, Judge)
    m, samples = judging.grm_accuracy(judge, recs, max_new_tokens=8, prefix="x/")
    calls = [items for items, _ in judge.calls]
    assert all(p.temperature == 0.0 and p.max_new_tokens == 8 for _, p in judge.calls)  # greedy
    assert calls[1][0][2:] == ("b0", "a0")  # the second pass swaps the responses
    # forward rewards: 1, 0, 0 (tie), 0 (unparsed); reverse (labels 2, 1, 2, 1): 1, 1, 1, 0
    assert m["x/accuracy"] == pytest.approx(0.25)
    assert m["x/accuracy_both"] == pytest.approx(4 / 8)
    # decided judgments: fwd 0, 1 and rev 0..3 -> rewards 1, 0, 1, 1, 1, 0
    assert m["x/accuracy_decided"] == pytest.approx(4 / 6)
    assert m["x/tie_rate"] == pytest.approx(1 / 8) and m["x/parse_failure"] == pytest.approx(1 / 8)
    # consistent: pair 0 (prefers 1 both ways); pair 1 flips with the order; 2, 3 tie / fail
    assert m["x/position_consistency"] == pytest.approx(0.25)
    assert m["x/accuracy_style"] == pytest.approx(0.5) and m["x/accuracy_minimal"] == 0.0
    assert m["x/accuracy_mixed"] == 0.0 and len(samples) == 4


def test_stage2_rewards_from_a_test_double_judge():
    """policy_rl's grouped-comparison reward takes any `rollout.Judge`: a canned one here, with the
    paper's mean aggregation computed by hand."""
    from types import SimpleNamespace

    sec = SimpleNamespace(
        pairs="both", num_pairs=None, judge_max_new_tokens=12, judge_temperature=0.0, aggregator="mean"
    )
    recs = [dict(question="q0", image="img0")]
    texts = ["red", "blue", "cut off"]
    complete = np.array([[True, True, False]])  # the third answer is truncated: never judged
    judge = CannedJudge([[r"\boxed{8, 2}", r"\boxed{3, 7}"]])
    rewards, judgments = trainer_rewards.judge_groups(judge, sec, recs, texts, complete, seed=5)
    ((groups, params),) = judge.calls
    assert groups == [("q0", "img0", [("red", "blue"), ("blue", "red")])]
    assert (params.max_new_tokens, params.temperature, params.seed) == (12, 0.0, 5)
    # answer 0: 8 as first, 7 as second -> 7.5; answer 1: 2 and 3 -> 2.5; answer 2: incomplete -> 0
    np.testing.assert_allclose(rewards, [[7.5, 2.5, 0.0]])
    assert judgments == [{(0, 1): (8.0, 2.0), (1, 0): (3.0, 7.0)}]


def test_sampling_params_and_engine_protocols():
    from grlhfv_jax.rollout import EngineRollout, Rollout, SamplingParams

    p = SamplingParams(max_new_tokens=4)
    assert (p.temperature, p.top_p, p.top_k, p.num_samples, p.seed) == (1.0, 1.0, 0, 1, 0)
    assert p.replace(seed=3).seed == 3 and p.seed == 0
    for bad, key in (
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=2, top_p=0.0), "top_p"),
        (dict(max_new_tokens=2, temperature=-1), "temperature"),
        (dict(max_new_tokens=2, num_samples=0), "num_samples"),
        (dict(max_new_tokens=2, top_k=-1), "top_k"),
    ):
        with pytest.raises(ValueError, match=key):
            SamplingParams(**bad)
    assert isinstance(EngineRollout(None, eos_token_id=2), Rollout)


def test_pooled_order_advantages_by_hand():
    """Stage 1's pooled groups (`trainers.rewards.grm_pair_reward(pool_orders=True)` -> the
    learner's advantages): both orders of a pair are one GRPO group (std with ddof=1)."""
    from grlhfv_jax.trainers import learner as rl_learner

    def pooled(r):
        return rl_learner.advantages(rl_learner.Rewards(r, np.tile(np.arange(len(r) // 2), 2)), np.ones(len(r)), "grpo")

    # pair 0 decided by position: right in its order (rows 0), wrong swapped (row 2); pair 1 mixed
    rewards = np.array(
        [
            [1, 1, 1, 1],
            [1, 0, 0, 0],  # dataset order, pairs 0, 1
            [0, 0, 0, 0],
            [1, 1, 0, 0],
        ],  # swapped order, pairs 0, 1
        float,
    )
    adv = pooled(rewards)
    a = 0.5 / np.sqrt(8 * 0.25 / 7)  # pair 0: mean 1/2, std sqrt(2/7)
    np.testing.assert_allclose(adv[0], [a] * 4, rtol=1e-5)
    np.testing.assert_allclose(adv[2], [-a] * 4, rtol=1e-5)
    r1 = np.array([1, 0, 0, 0, 1, 1, 0, 0], float)  # pair 1: 3 of 8 right
    want = (r1 - r1.mean()) / r1.std(ddof=1)
    np.testing.assert_allclose(np.concatenate([adv[1], adv[3]]), want, rtol=1e-5)
    # per-order groups would give pair 0 nothing at all
    np.testing.assert_allclose(np.asarray(learner.response_advantages(rewards[[0, 2]], np.ones(8), "grpo")), 0.0)
    with pytest.raises(ValueError, match="every id equally often"):
        rl_learner.advantages(rl_learner.Rewards(rewards[:3], np.array([0, 1, 0])), np.ones(3), "grpo")
    # fill rows (valid 0) get no advantage
    np.testing.assert_allclose(rl_learner.advantages(rl_learner.Rewards(rewards), np.array([1, 1, 0, 1]), "grpo")[2], 0)


def test_consistency_reward_with_pooled_orders_by_hand():
    """Stage 1 as the demo runs it (`grm_pair_reward(consistency=True, pool_orders=True)`): judgment
    k of a pair and judgment k of its swapped order both get 1 only when both order the pair right;
    both orders form one group. A judge that follows position gets 0 in both orders, so a
    consistent judgment of the same pair gets a positive advantage over it."""
    from grlhfv_jax.trainers import learner as rl_learner
    from grlhfv_jax.trainers.rewards import grm_pair_reward

    first, second = r"\boxed{8, 3}", r"\boxed{2, 7}"  # prefers response 1 / response 2 as shown
    # pair 0 (human: 1), then pair 1 (human: 2); rows 2-3: the same pairs swapped, labels flipped
    items = [("q0", None, "a", "b", 1), ("q1", None, "c", "d", 2), ("q0", None, "b", "a", 2), ("q1", None, "d", "c", 1)]
    texts = [
        *(first, first, second, first),  # pair 0 shown as is: right, right, wrong, right
        *(second, second, second, "no scores"),  # pair 1 shown as is: right x3, unparsed
        *(first, second, second, second),  # pair 0 swapped: wrong (position), right x3
        *(first, first, second, first),  # pair 1 swapped: right, right, wrong, right
    ]
    rollout = rl_learner.Rollout(items=items, prompts={}, gen=None, texts=texts, group=4)
    out = grm_pair_reward(consistency=True, pool_orders=True)(rollout, 0)
    both = np.array([[0, 1, 0, 1], [1, 1, 0, 0]], float)  # judgment k right in both orders
    np.testing.assert_array_equal(out.values, np.concatenate([both, both]))
    np.testing.assert_array_equal(out.groups, [0, 1, 0, 1])
    assert out.metrics["judge/accuracy"] == pytest.approx(12 / 16)  # each judgment alone
    adv = rl_learner.advantages(out, np.ones(4), "grpo")
    for p in (0, 1):
        r = np.concatenate([out.values[p], out.values[p + 2]])
        np.testing.assert_allclose(np.concatenate([adv[p], adv[p + 2]]), (r - r.mean()) / r.std(ddof=1), rtol=1e-5)
    assert adv[0, 0] < 0 < adv[0, 1]  # judgment 0 followed position (first in both orders)


def test_grpo_learner_splits_rows_over_8_devices_and_matches_one_device(fresh_model, monkeypatch):
    """`grpo_update` on a model sharded over a 2x2x2 mesh of fake devices: the step receives its
    rows split over (data, fsdp) (each device a quarter of the rows, not a replica) and the update
    equals the one of the same learner on one device."""
    from grlhfv_jax import sharding

    rng = np.random.default_rng(3)
    ids = rng.integers(3, 90, (4, 6)).astype(np.int32)
    prompts = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    gen = generate(fresh_model(), prompts, max_new_tokens=3, temperature=1.0, num_samples=4, rng=jax.random.key(0))
    rewards = rng.random((4, 4))
    seen = []
    real_step = steps.grpo_step

    def recording_step(state, batch, cfg, **kw):
        seen.append({k: (v.sharding, v.shape) for k, v in batch.items()})
        assert kw["group"] == 4  # the 4 samples of a prompt share it
        return real_step(state, batch, cfg, **kw)

    monkeypatch.setattr(steps, "grpo_step", recording_step)
    after = []
    for mesh in (sharding.make_mesh((2, 2, 2)), None):
        model, ref = fresh_model(), fresh_model()
        if mesh is not None:
            model, ref = sharding.shard_model(model, mesh), sharding.shard_model(ref, mesh)
        state = steps.TrainState(model, __import__("optax").sgd(0.1))
        learner.grpo_update(state, ref, prompts, gen, rewards, pad_id=0, cfg=steps.GRPOConfig(), mini_batches=1)
        after.append({str(k): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
    rows, shape = seen[0]["input_ids"]
    assert shape[0] == 16 and len(rows.device_set) == 8
    assert rows.shard_shape(shape) == (4, shape[1])  # 16 rows over data x fsdp = 4 shards of 4
    assert seen[0]["advantages"][0].shard_shape((16,)) == (4,)
    assert len(seen[1]["input_ids"][0].device_set) == 1
    for k in after[1]:
        np.testing.assert_allclose(after[0][k], after[1][k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_rm_scoring_splits_rows_over_8_devices_and_matches_one_device(hf, monkeypatch):
    """`scoring.score_batch` (the score-only RM's evaluation and reward) places its rows on the
    model's mesh: each of 8 fake devices a quarter of the rows over (data, fsdp), same scores."""
    from grlhfv_jax import sharding

    fresh_rm = _copies(models.from_config(hf, rngs=nnx.Rngs(0), scalar_head=True))
    rng = np.random.default_rng(5)
    b = make_batch(
        [[list(rng.integers(3, 90, 4)), (1, 2, 2), list(rng.integers(3, 90, 3))] for _ in range(8)], pad_side="right"
    )
    batch = {k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    seen, real = [], scoring._scores

    def recording(model, jb):
        seen.append(jb["input_ids"].sharding)
        return real(model, jb)

    monkeypatch.setattr(scoring, "_scores", recording)
    scores = []
    for mesh in (sharding.make_mesh((2, 2, 2)), None):
        model = fresh_rm()
        if mesh is not None:
            model = sharding.shard_model(model, mesh)
        scores.append(scoring.score_batch(model, batch))
    assert len(seen[0].device_set) == 8 and seen[0].shard_shape((8, batch["input_ids"].shape[1]))[0] == 2
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-6)


def test_stage2_judging_seed_follows_the_run_seed_and_the_step():
    """`judge_reward`'s seed: the same for the same config.seed and step (a resumed run judges the
    same pairs), another for another config.seed or step, never the policy's sampling seed of the
    step (config.seed * 7919 + step); with pairs "random" it chooses the pairs judged."""
    from types import SimpleNamespace

    sec = SimpleNamespace(pairs="random", num_pairs=2, judge_max_new_tokens=4, judge_temperature=1.0, aggregator="mean")
    rollout = SimpleNamespace(
        items=[dict(question="q0", image="img0")],
        group=5,
        texts=[f"answer {i}" for i in range(5)],
        complete=np.ones((1, 5), bool),
    )

    def judged(run_seed, step):
        judge = CannedJudge([[r"\boxed{6, 4}", r"\boxed{5, 5}"]])
        trainer_rewards.judge_reward(judge, sec, run_seed=run_seed)(rollout, step)
        ((groups, params),) = judge.calls
        return params.seed, tuple(groups[0][2])

    runs = {(s, t): judged(s, t) for s in range(4) for t in range(3)}
    assert judged(2, 1) == runs[(2, 1)]  # deterministic
    seeds = [seed for seed, _ in runs.values()]
    assert len(set(seeds)) == len(seeds)  # every (config.seed, step) its own
    assert all(0 <= seed < 2**31 for seed in seeds)
    assert all(runs[(s, t)][0] != s * 7919 + t for s, t in runs)  # not the policy's sampling seed
    assert len({pairs for _, pairs in runs.values()}) > 3  # the random pairs change with it
    # the pairs are the 2 drawn by rl.grouped.judging_plan with that seed (the group's index 0 added)
    from grlhfv_jax.rl import grouped

    for seed, pairs in runs.values():
        want = grouped.judging_plan(5, None, "random", num_pairs=2, seed=seed)
        assert list(pairs) == [(f"answer {i}", f"answer {j}") for i, j in want]
