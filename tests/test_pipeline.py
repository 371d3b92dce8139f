"""The CLI and the stages: config validation, resume, and a smoke run of every stage."""

import json
import os
import re
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grlhfv_jax import config as config_schema
from grlhfv_jax import main, report, roles, stages
from grlhfv_jax.metrics import MetricsWriter, read_jsonl
from grlhfv_jax.rollout import grm_judge
from grlhfv_jax.stages import ConfigError
from grlhfv_jax.trainers import loop, steps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import demo  # noqa: E402


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("stages", ["data", "sfft"], r"config\.stages = \('data', 'sfft'\): must be .*\('sfft' is not\)"),
        ("grm_rl.group_size", 1, r"config\.grm_rl\.group_size = 1"),
        ("policy_rl.aggregator", "median", r"config\.policy_rl\.aggregator = 'median'"),
        ("policy_rl.mini_batches", 3, r"config\.policy_rl\.mini_batches = 3 must divide"),
        ("data.label_noise", 0.7, r"config\.data\.label_noise"),
        ("sft.policy.lr", -1.0, r"config\.sft\.policy\.lr = -1\.0"),
        ("mesh_shape", (2, -1, -1), r"config\.mesh_shape"),
        ("data.sft_grm_analysis", "opinions", r"config\.data\.sft_grm_analysis = 'opinions'"),
        ("data.sft_grm_first_scores", (5, 6), r"config\.data\.sft_grm_first_scores: "),
        ("data.sft_grm_opinions", (("hedging", 1),), r"config\.data\.sft_grm_opinions: "),
        ("data.sft_grm_opinions", ("hedges",), r"config\.data\.sft_grm_opinions = "),
        ("data.sft_grm_opinion_strength", 2.0, r"config\.data\.sft_grm_opinion_strength = 2\.0: must be in \[0, 1\]"),
        ("sft.policy.styles", {"rude": 1.0}, r"config\.sft\.policy\.styles"),
        ("sft.policy.data", "gold", r"config\.sft\.policy\.data = 'gold'"),
        ("evaluate.samples", -1, r"config\.evaluate\.samples = -1"),
        ("vision.eval_images", 0, r"config\.vision\.eval_images = 0"),
        ("vision.model", "critic", r"config\.vision\.model = 'critic'"),
        ("model.grm.hf_config.vision_config.depth", 3, r"config\.sft\.grm\.pretrained_vision"),
        ("grm_rl.kl_coeff", 0.1, r"config\.grm_rl\.kl_coeff: unknown key; did you mean 'kl_coef'"),
        (
            "sft.policy.pretrained_visoin",
            True,
            r"config\.sft\.policy\.pretrained_visoin: unknown key; did you mean "
            r"'pretrained_vision'",
        ),
        ("policy_rl_rm.rewards", "rm", r"config\.policy_rl_rm\.rewards: unknown key; did you mean 'reward'"),
    ],
)
def test_bad_config_fails_before_anything_runs_naming_the_key(key, value, match):
    config = demo.get_config("smoke")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        config_schema.validate(config)


def test_consistency_reward_needs_both_orders():
    config = demo.get_config("smoke")
    config.grm_rl.update(position_debias=False, consistency_reward=True)
    with pytest.raises(ConfigError, match=r"consistency_reward needs"):
        config_schema.validate(config)
    config = demo.get_config("smoke")
    config.grm_rl.update(position_debias=False, consistency_reward=False, pool_orders=True)
    with pytest.raises(ConfigError, match=r"pool_orders needs"):
        config_schema.validate(config)


def test_missing_section_is_named():
    config = demo.get_config("smoke")
    del config["rm"]
    with pytest.raises(ConfigError, match=r"config\.rm is missing"):
        config_schema.validate(config)


class _Toy(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.ones((2,)))


def test_train_loop_resumes_where_it_stopped_and_stops_on_nan(tmp_path):
    def fresh():
        return steps.TrainState(_Toy(), optax.sgd(0.1))

    seen = []

    def step_fn(state, batch):
        seen.append(batch)
        if batch == "boom":
            raise RuntimeError("crash")
        state.model.w[...] = state.model.w[...] + 1.0
        return state, {"loss": jnp.float32(1.0)}

    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    kw = dict(steps=5, step_fn=step_fn, writer=writer, ckpt_dir=str(tmp_path / "ck"), log_every=1, ckpt_every=1)
    with pytest.raises(RuntimeError, match="crash"):
        loop.train_loop("toy", fresh(), make_batch=lambda s: "boom" if s == 3 else s, **kw)
    assert seen == [0, 1, 2, "boom"]
    seen.clear()
    state = fresh()
    loop.train_loop("toy", state, make_batch=lambda s: s, **kw)
    assert seen == [3, 4]  # steps 0-2 were checkpointed: not redone
    np.testing.assert_allclose(np.asarray(state.model.w[...]), 6.0)  # 1 + five updates in all
    assert [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))] == [1, 2, 3, 4, 5]

    def nan_step(state, batch):
        return state, {"loss": jnp.float32(np.nan)}

    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss .* step 1"):
        loop.train_loop(
            "nan", fresh(), make_batch=lambda s: s, **dict(kw, step_fn=nan_step, ckpt_dir=str(tmp_path / "ck2"))
        )

    # the loss is checked once the next batch is built (host work overlaps the step): a bad third
    # step is still caught before a fourth runs or a checkpoint of it is written
    ran = []

    def late_nan(state, batch):
        ran.append(batch)
        return state, {"loss": jnp.float32(np.nan if batch == 2 else 1.0)}

    with pytest.raises(loop.NonFiniteLossError, match=r"step 3; the last checkpoint \(2\)"):
        loop.train_loop(
            "nan",
            fresh(),
            make_batch=lambda s: s,
            **dict(kw, step_fn=late_nan, log_every=10, ckpt_dir=str(tmp_path / "ck3")),
        )
    assert ran == [0, 1, 2]
    writer.close()


def test_a_checkpoint_that_cannot_be_restored_names_the_stage_the_folder_and_the_fix(tmp_path):
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    ckpt_dir = str(tmp_path / "stage" / "ckpt")
    kw = dict(steps=2, make_batch=lambda s: s, writer=writer, ckpt_dir=ckpt_dir, ckpt_every=1)
    step_fn = lambda st, b: (st, {"loss": jnp.float32(1.0)})  # noqa: E731
    loop.train_loop("toy", steps.TrainState(_Toy(), optax.sgd(0.1)), step_fn=step_fn, **kw)
    for root, _, files in os.walk(ckpt_dir):  # damage every array file of the saved step
        for name in files:
            if not name.endswith(".json") and "state" in root:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    finished = tmp_path / "finished_stage" / "config.json"
    finished.parent.mkdir()
    finished.write_text("{}")
    with pytest.raises(
        loop.ResumeError, match=r"\[toy\] cannot resume .*" + re.escape(ckpt_dir) + r".*Delete .* to redo"
    ):
        loop.train_loop("toy", steps.TrainState(_Toy(), optax.sgd(0.1)), step_fn=step_fn, **kw)
    assert finished.exists() and os.listdir(ckpt_dir)  # nothing deleted
    writer.close()


def test_smoke_run_writes_every_output(smoke_run):
    config, workdir, summary = smoke_run
    for key in (
        "grm/accuracy_id",
        "grm/accuracy_ood",
        "grm/sft_accuracy_id",
        "grm/position_consistency_id",
        "grm/parse_failure_id",
        "baseline_rm/accuracy_id",
        "baseline_rm/accuracy_ood",
        "policy/oracle_score_before",
        "policy/oracle_score_after",
        "baseline_rm/oracle_score_after",
        "dpo/oracle_score_after",
        "dpo/train_loss",
        "policy/oracle_score_sampled_before",
        "policy/oracle_score_sampled_after",
        "policy/hedge_rate_sampled_after",
        "dpo/oracle_score_sampled_after",
    ):
        assert key in summary and np.isfinite(summary[key]), key
    for name in config.stages:
        assert summary[f"time/{name}_s"] > 0
    assert json.load(open(os.path.join(workdir, "summary.json"))) == json.loads(json.dumps(summary))
    logged = {r["stage"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
    assert {"sft_policy", "sft_grm", "grm_rl", "rm", "policy_rl", "policy_rl_rm", "dpo"} <= logged
    # DPO's first step: the policy is its reference, so the loss is log 2 exactly (references wired right)
    first = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["stage"] == "dpo"][0]
    assert first["step"] == 1 and first["loss"] == pytest.approx(np.log(2.0), abs=1e-5)
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    page = open(os.path.join(workdir, "report.html")).read()
    assert "Sample judgments" in page and "data:image/png;base64" in page
    # each RL step's time, split into its phases (metrics.jsonl and the report's table)
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    times = report.step_times(rows)
    for stage in ("grm_rl", "policy_rl", "policy_rl_rm"):
        t = times[stage]
        assert all(t[p] > 0 for p in ("rollout", "reward", "ref_logprobs", "update", "step")), (stage, t)
        assert sum(t[p] for p in ("rollout", "reward", "ref_logprobs", "update")) <= t["step"] + 1e-6, (stage, t)
        assert t["other"] == pytest.approx(t["step"] - sum(t[p] for p in report.STEP_PARTS))
    assert "Time per RL step" in page and "policy_rl_rm" in page.split("Time per RL step")[1]
    for a in ("colour", "count", "shape", "position"):
        assert 0.0 <= summary[f"vision/heldout_accuracy_{a}"] <= 1.0, a
    for d in (
        "vision/model",
        "sft/policy",
        "sft/grm",
        "grm_rl/grm",
        "rm/rm",
        "policy_rl/policy",
        "policy_rl_rm/policy",
        "dpo/policy",
    ):
        assert os.path.isfile(os.path.join(workdir, d, "config.json")), d


def test_sft_models_start_from_the_pretrained_vision_tower(smoke_run):
    """Both warm starts carry the `vision` stage's tower (frozen, so still equal after SFT) and
    their own randomly initialised language models."""
    from grlhfv_jax import models

    _, workdir, _ = smoke_run
    src = models.load_pretrained(os.path.join(workdir, "vision", "model"))
    fresh = models.from_config(src.config, rngs=nnx.Rngs(123))
    for target in ("policy", "grm"):
        m = models.load_pretrained(os.path.join(workdir, "sft", target))
        for a, b, c in zip(jax_leaves(m.visual), jax_leaves(src.visual), jax_leaves(fresh.visual)):
            np.testing.assert_array_equal(a, b)
            assert not np.array_equal(a, c) or a.size == 0 or np.all(a == a.flat[0])  # not a fresh tower
        assert not np.array_equal(
            np.asarray(m.model.embed_tokens.weight[...]), np.asarray(src.model.embed_tokens.weight[...])
        )


def jax_leaves(module):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(nnx.state(module, nnx.Param))]


def _copy(workdir: str, tmp_path) -> str:
    """A test's own copy of the shared smoke run's folder (conftest.smoke_run), to write into."""
    import shutil

    return shutil.copytree(workdir, str(tmp_path / "smoke"))


def test_rerun_skips_finished_stages_and_refuses_a_changed_config(smoke_run, capsys, tmp_path):
    config, workdir, summary = smoke_run
    workdir = _copy(workdir, tmp_path)
    again = main.run(config, workdir)
    out = capsys.readouterr().out
    assert out.count("finished in an earlier run") == len(config.stages)
    assert {k: v for k, v in again.items()} == summary
    changed = demo.get_config("smoke")
    changed.grm_rl.lr = 1e-2
    with pytest.raises(SystemExit, match=r"grm_rl\.lr"):
        main.run(changed, workdir)


def test_grouped_judging_shares_the_prefix_and_equals_separate_prompts(smoke_run, monkeypatch):
    """Stage 2's judge path (one prefix prefill per prompt, pairs in its copied cache, the image
    processor once per prompt) must give the texts that judging every pair with its full prompt
    gives (greedy)."""
    from grlhfv_jax import models, processing
    from grlhfv_jax.data import pipeline
    from grlhfv_jax.rollout import Judge, SamplingParams

    config, workdir, _ = smoke_run
    config = config_schema.validate(config)
    codec = roles.codec(config, workdir)
    grm = models.load_pretrained(os.path.join(workdir, "grm_rl", "grm"))
    recs = pipeline.load_records(
        roles.paths(config, workdir)["data_dir"], "grm_test_id", roles.world_config(config), n=2
    )
    answers = ["Red.", "They are two blue squares on the left.", "Maybe green."]
    groups = [
        (r["question"], r["image"], [(answers[i], answers[j]) for i in range(3) for j in range(3) if i != j][:k])
        for r, k in zip(recs, (6, 3))
    ]
    judge = grm_judge.GRMJudge(grm, codec, rows=9, max_len=256)
    assert isinstance(judge, Judge)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    processed, process = [], processing._process
    monkeypatch.setattr(
        processing, "_process", lambda proc, images: processed.append(len(images)) or process(proc, images)
    )
    shared = judge.judge_groups(groups, greedy)
    assert processed == [1, 1]  # one image per prompt group, not one per judged pair (6 + 3)
    monkeypatch.undo()
    separate = judge.judge([(q, img, a, b) for q, img, pairs in groups for a, b in pairs], greedy)
    assert [len(g) for g in shared] == [6, 3]
    assert [t for g in shared for t in g] == separate
    # policy_rl.judge_prompts_per_call = 1: one prompt group per call, the same greedy judgments
    one = grm_judge.GRMJudge(grm, codec, rows=9, max_len=256, max_prompts=1).judge_groups(groups, greedy)
    assert one == shared


def test_nscale_stage_writes_a_gain_per_n_and_aggregator(smoke_run, tmp_path):
    """nscale with `aggregators`: one run per aggregator (and n), each judged and rewarded by its
    aggregator (the first step's samples and judgments are the same: same policy and seeds). The
    smoke run's policy and GRM made to end answers and write judgments that parse
    (test_stage2_http_judge.judging_grm: \\boxed{s1, s2}, s1 in 1-4, s2 in 6-9)."""
    from test_stage2_http_judge import _inputs_of

    config, smoke, _ = smoke_run
    codec = roles.codec(config_schema.validate(config), smoke)
    workdir = _inputs_of(smoke, tmp_path / "nscale_run", codec, judge=True)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.nscale = {
            "ns": [2],
            "rewards": ["grm"],
            "aggregators": ["mean", "win_rate"],
            "policy": config.policy_rl.to_dict(),
        }
    config_schema.validate(config)
    writer = MetricsWriter(workdir, tensorboard=False)
    summary = stages.run_stage("nscale", config, workdir, writer)
    writer.close()
    gains = json.load(open(os.path.join(workdir, "nscale.json")))
    assert set(gains) == {"grm_mean", "grm_win_rate"} and all(set(g) == {"2"} for g in gains.values())
    for label in gains:
        assert summary[f"nscale/{label}_gain_n2"] == gains[label]["2"]
        assert os.path.isfile(os.path.join(workdir, "nscale", f"nscale_{label}_n2", "policy", "config.json"))
    first = {
        r["stage"]: r
        for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        if r["step"] == 1 and r["stage"].startswith("nscale_")
    }
    mean, win = first["nscale_grm_mean_n2"], first["nscale_grm_win_rate_n2"]
    assert mean["judge/parse_failure_rate"] == win["judge/parse_failure_rate"] < 1
    # n = 2, both orders, the planted judge's first score 1-4 and second 6-9 (Response 2 always wins): a
    # complete pair's answers get the win rate 1/2 each, the mean of its two scores (one 1-4, one 6-9) each,
    # in [3.5, 6.5]; an incomplete answer 0 under both
    assert win["reward/max"] == 0.5 and 3.5 <= mean["reward/max"] <= 6.5, (mean, win)


def test_nscale_runs_are_named_by_reward_and_aggregator():
    """config.sections.nscale_runs: without `aggregators` a run per reward (keys nscale/<reward>_gain_n<n>,
    as before); with them a 'grm' run per aggregator; demo_nscale.py:aggregators validates."""
    import importlib.util

    from grlhfv_jax.config.sections import nscale_runs

    spec = importlib.util.spec_from_file_location(
        "demo_nscale_cfg", os.path.join(os.path.dirname(__file__), "..", "configs", "demo_nscale.py")
    )
    demo_nscale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_nscale)
    plain = config_schema.validate(demo_nscale.get_config("smoke"))
    assert plain.nscale.aggregators is None
    assert nscale_runs(plain.nscale) == [("grm", {"reward": "grm"}), ("rm", {"reward": "rm"})]
    c = demo_nscale.get_config("aggregators,smoke")
    agg = config_schema.validate(c)
    assert [label for label, _ in nscale_runs(agg.nscale)] == [f"grm_{a}" for a in demo_nscale.AGGREGATORS]
    assert nscale_runs(agg.nscale)[3] == ("grm_borda", {"reward": "grm", "aggregator": "borda"})
    c.nscale.rewards = ["rm", "grm"]
    c.nscale.aggregators = ["borda", "mean"]
    assert [label for label, _ in nscale_runs(config_schema.validate(c).nscale)] == ["rm", "grm_borda", "grm_mean"]
    for bad, match in (
        (["borda", "median"], r"config\.nscale\.aggregators = .*'median' is not"),
        (["borda", "borda"], r"config\.nscale\.aggregators = .*without repeats"),
        ([], "non-empty"),
    ):
        c.nscale.aggregators = bad
        with pytest.raises(ConfigError, match=match):
            config_schema.validate(c)


@pytest.mark.slow
def test_full_demo_learns(tmp_path):
    """The README's demo, within 15 minutes. Asserts what held in every run of robustness sweep 4b
    (seeds 0-3 and the other attention arithmetic, docs/results.md), each threshold at least 2
    standard errors below the sweep's smallest value. SEs: an accuracy or consistency on 200
    held-out pairs <= 0.035, a difference of two accuracies on the same pairs <= 0.05; a sampled
    rate over 800 answers <= 0.018 (drop of a rate <= 0.025); the oracle gains carry their own
    paired SE (`*_se`, over the 800 samples per policy). Issue 12's bars are stage-1 gain >= 0.1,
    consistency >= 0.5 and a gain > 2 SE; consistency is asserted at 0.44 only (sweep min 0.515,
    2 SE below it). Not asserted: GRLHF-V over DPO (sweep 6 min +0.028, under 2 SE of a difference
    of two gains) and over the RM+GRPO baseline (level). Sweep 5 (the AVX2 CPU, 3 seeds) met every
    bar on seed 0; its seed 2 failed stage 2 (+0.005) under the paper's mean-score aggregator.
    Sweep 6 (stage 2 by win rate, this config: 5 seeds and a perturbed arithmetic on the AVX2 CPU)
    met every assertion here on every run."""
    summary = main.run(demo.get_config(), str(tmp_path))
    # the vision probes on 512 held-out images (SE <= 0.015): sweep min 1.0, shape 0.875
    assert min(summary[f"vision/heldout_accuracy_{a}"] for a in ("colour", "count", "position")) > 0.95
    assert summary["vision/heldout_accuracy_shape"] > 0.84
    for split in ("id", "ood"):
        assert summary[f"grm/tie_rate_{split}"] < 0.05, split
        # stage 1: sweep gains 0.21-0.26 ID, 0.215-0.265 OOD (2 SE of a difference: 0.1)
        gain = summary[f"grm/accuracy_{split}"] - summary[f"grm/sft_accuracy_{split}"]
        assert gain > 0.1, (split, gain)
        # position consistency after stage 1: sweep 0.515-0.615 ID, 0.52-0.625 OOD (sweep 9, the
        # consistency reward: 0.55-0.66); issue 12's bar is 0.5, asserted 2 SE below the sweeps' min
        assert summary[f"grm/position_consistency_{split}"] > 0.44, split
        assert summary[f"baseline_rm/accuracy_{split}"] > 0.59, split  # sweep min 0.665
    # stage 2: GRLHF-V's sampled oracle gain (sweep 6: 0.064-0.082, each >= 6.4 SE)
    gain, se = summary["policy/oracle_gain_sampled_vs_sft"], summary["policy/oracle_gain_sampled_vs_sft_se"]
    assert gain > 2 * se, (gain, se)
    # the judge penalises hedging, the policy drops it: sweep 6 0.196-0.251 -> 0.035-0.062 (drop >= 0.156)
    assert summary["policy/hedge_rate_sampled_after"] < summary["policy/hedge_rate_sampled_before"] - 0.1
    # and self-praise: sweep 6 0.32-0.37 -> 0.044-0.094 (drop >= 0.232; SE of a drop <= 0.025)
    assert summary["policy/self_praise_rate_sampled_after"] < summary["policy/self_praise_rate_sampled_before"] - 0.15
    # issue 27: the greedy answers not worse than the SFT policy's by more than 2 paired SE (sweeps 9
    # and 10, lr 1.5e-4: within 1.3 SE on 8 of 10 seeds, seed 0's -1.1 among them; seed 6 fell 2.2 SE
    # and seed 9 6.1: this bar fails on about one seed in ten, docs/results.md)
    gain, se = summary["policy/oracle_gain_greedy_vs_sft"], summary["policy/oracle_gain_greedy_vs_sft_se"]
    assert gain > -2 * se, (gain, se)
    assert sum(v for k, v in summary.items() if k.startswith("time/")) < 15 * 60


# Every training stage's checkpoint folder; the smoke config checkpoints after each of its 2 steps.
_CKPT_DIRS = (
    "vision/ckpt",
    "sft/ckpt_policy",
    "sft/ckpt_grm",
    "grm_rl/ckpt",
    "rm/ckpt",
    "policy_rl/ckpt",
    "policy_rl_rm/ckpt",
    "policy_ppo_rm/ckpt",
    "dpo/ckpt",
)
# Kills after an export: between the two halves of `sft`, and where a stage skips its work when its
# export exists (vision, sft) and must still report the same figures.
_KILLED_EXPORTS = ("vision/model", "sft/policy", "sft/grm")
_MODELS = (
    "vision/model",
    "sft/policy",
    "sft/grm",
    "grm_rl/grm",
    "rm/rm",
    "policy_rl/policy",
    "policy_rl_rm/policy",
    "policy_ppo_rm/policy",
    "dpo/policy",
)


def test_resume_from_every_kill_point_gives_the_uninterrupted_result(smoke_run, tmp_path):
    """SIGKILL the smoke pipeline at each kill point in turn (tests/resume_driver.py): mid-loop and
    after the final checkpoint of every training stage, and after the exports above; rerunning the
    same command each time must finish with the parameters and summary of the uninterrupted run."""
    import signal
    import subprocess

    from safetensors.numpy import load_file

    config, ref_dir, ref_summary = smoke_run
    assert all(
        config[k].ckpt_every == 1 for k in ("vision", "sft", "grm_rl", "rm", "policy_rl", "policy_ppo_rm", "dpo")
    )
    expected = [f"{d}@{s}" for d in _CKPT_DIRS for s in (1, 2)] + [f"export:{d}" for d in _KILLED_EXPORTS]
    workdir, taken = str(tmp_path / "run"), str(tmp_path / "taken.txt")
    with open(taken, "w") as f:  # the other exports are not kill points here (their stage redoes its evaluation)
        f.write("".join(f"export:{d}\n" for d in _MODELS if d not in _KILLED_EXPORTS))
    driver = os.path.join(os.path.dirname(__file__), "resume_driver.py")
    for _ in range(len(expected) + 1):
        p = subprocess.run([sys.executable, driver, workdir, taken], capture_output=True, text=True)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, f"a resumed run failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert p.returncode == 0
    killed = open(taken).read().split()[len(_MODELS) - len(_KILLED_EXPORTS) :]
    assert sorted(killed) == sorted(expected)  # every kill point was hit, once
    summary = json.load(open(os.path.join(workdir, "summary.json")))

    def timeless(s):  # as JSON text: exact floats, and NaN equals NaN
        return json.dumps({k: v for k, v in s.items() if not k.startswith("time/")}, sort_keys=True)

    assert timeless(summary) == timeless(ref_summary)
    for d in _MODELS:
        a, b = (
            load_file(os.path.join(ref_dir, d, "model.safetensors")),
            load_file(os.path.join(workdir, d, "model.safetensors")),
        )
        assert a.keys() == b.keys(), d
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{d}: {k}")
