"""Checkpointing, metrics files and the CLI's workdir handling."""

import json
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from grlhfv_jax import checkpoint, main, metrics


def _model_and_opt(seed):
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, opt


def _step(model, opt):
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
    opt.update(model, grads)


def test_checkpoint_round_trip_restores_model_optimizer_and_extra(tmp_path):
    model, opt = _model_and_opt(0)
    _step(model, opt)
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
    ck.save(1, model, opt, {"seen": 7})
    _step(model, opt)
    ck.save(2, model, opt, {"seen": 9})
    ck.wait()
    fresh, fresh_opt = _model_and_opt(1)
    step, extra = ck.restore_latest(fresh, fresh_opt)
    assert (step, extra) == (2, {"seen": 9})
    np.testing.assert_array_equal(np.asarray(fresh.kernel[...]), np.asarray(model.kernel[...]))
    np.testing.assert_array_equal(np.asarray(fresh_opt.step[...]), 2)
    mu_a = jnp.concatenate([x.ravel() for x in __import__("jax").tree.leaves(nnx.state(opt, nnx.optimizer.OptState))])
    mu_b = jnp.concatenate(
        [x.ravel() for x in __import__("jax").tree.leaves(nnx.state(fresh_opt, nnx.optimizer.OptState))]
    )
    np.testing.assert_array_equal(np.asarray(mu_a), np.asarray(mu_b))
    # The same training continues identically from the restored state.
    _step(model, opt)
    _step(fresh, fresh_opt)
    np.testing.assert_allclose(np.asarray(fresh.kernel[...]), np.asarray(model.kernel[...]), atol=1e-7)
    ck.close()


def test_checkpoint_failed_save_keeps_previous_and_names_directory(tmp_path, monkeypatch):
    model, opt = _model_and_opt(0)
    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
    ck.save(1, model, opt, {"k": 1})
    ck.wait()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck._manager, "save", disk_full)
    with pytest.raises(OSError, match=r"step 2 .*ck.*previous checkpoint \(1\)"):
        ck.save(2, model, opt)
    # A half-written step folder left by a crash is not taken for a finished checkpoint.
    os.makedirs(tmp_path / "ck" / "3.orbax-checkpoint-tmp-123")
    fresh, fresh_opt = _model_and_opt(1)
    assert ck.restore_latest(fresh, fresh_opt)[0] == 1


def test_metrics_jsonl_tensorboard_and_torn_line(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path))
    w.write("sft", 1, {"loss": np.float32(2.5), "bad": float("nan"), "text": "skip"})
    w.write("sft", 2, {"loss": 1.5})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"stage": "sft", "st')  # a crash mid-line
    rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["loss"] for r in rows] == [2.5, 1.5]
    assert rows[0]["bad"] == "nan" and "text" not in rows[0]
    assert any(p.startswith("events.out.tfevents") for p in os.listdir(tmp_path / "tensorboard"))
    s = metrics.update_summary(str(tmp_path), {"grm/accuracy_id": np.float64(0.75)})
    s = metrics.update_summary(str(tmp_path), {"policy/x": 1})
    assert json.load(open(tmp_path / "summary.json")) == {"grm/accuracy_id": 0.75, "policy/x": 1.0} == s


def test_workdir_refuses_a_different_config_and_restart_clears(tmp_path):
    cfg = ConfigDict({"stages": ["data"], "a": {"b": 1}})
    main.prepare_workdir(cfg, str(tmp_path), restart=False)
    main.prepare_workdir(cfg, str(tmp_path), restart=False)  # same config: fine
    other = ConfigDict({"stages": ["data"], "a": {"b": 2}})
    with pytest.raises(SystemExit, match=r"a\.b"):
        main.prepare_workdir(other, str(tmp_path), restart=False)
    (tmp_path / "junk").write_text("x")
    main.prepare_workdir(other, str(tmp_path), restart=True)
    assert not (tmp_path / "junk").exists()


def test_sweep_aggregates_mean_and_spread_by_hand(tmp_path):
    import json

    from grlhfv_jax import sweep

    runs = []
    for i, (a, b) in enumerate([(0.6, 1.0), (0.7, float("nan")), (0.8, 3.0)]):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"grm/accuracy_id": a, "x": b, "only_here": i, "name": "s"}))
        runs.append(str(d))
    agg = sweep.main(["--out", str(tmp_path / "agg"), *runs])
    assert abs(agg["grm/accuracy_id"] - 0.7) < 1e-12 and abs(agg["grm/accuracy_id/std"] - 0.1) < 1e-12
    assert agg["grm/accuracy_id/min"] == 0.6 and agg["grm/accuracy_id/max"] == 0.8
    assert "x" not in agg and "name" not in agg  # a NaN in one run, a string: left out
    assert agg["only_here"] == 1.0 and agg["sweep/runs"] == 3
    page = (tmp_path / "agg" / "report.html").read_text()
    assert "0.700 &plusmn; 0.100" in page  # the headline shows the spread


def test_paired_se_and_the_stage_verdicts_by_hand():
    from grlhfv_jax import report
    from grlhfv_jax.stages import evaluate

    assert abs(evaluate._se([1.0, 2.0, 3.0]) - 1.0 / np.sqrt(3.0)) < 1e-12  # std (ddof=1) 1 over sqrt(3)
    base = {
        "grm/sft_accuracy_id": 0.5,
        "grm/sft_accuracy_ood": 0.5,
        "grm/accuracy_id": 0.61,
        "grm/accuracy_ood": 0.59,
        "policy/oracle_score_sampled_before": 0.70,
        "policy/oracle_score_sampled_after": 0.72,
        "policy/oracle_gain_sampled_vs_sft_se": 0.01,
    }
    v = report.verdicts(base)
    assert v[0].startswith("Stage 1 (GRM RL): did not learn")  # +0.09 out of distribution < 0.1
    assert v[1].endswith(": improved.")  # +0.02 = 2 SE
    v = report.verdicts(dict(base, **{"grm/accuracy_ood": 0.6, "policy/oracle_gain_sampled_vs_sft_se": 0.011}))
    assert v[0].startswith("Stage 1 (GRM RL): learned") and v[1].endswith("did not improve by 2 standard errors.")


def test_step_times_hand_case():
    """report.step_times: the mean seconds of each RL step phase over the logged rows, "other" the
    step less its phases; stages without time metrics are absent."""
    from grlhfv_jax import report

    rows = [
        dict(
            stage="policy_rl",
            step=1,
            time=0.0,
            **{
                "time/rollout_s": 1.0,
                "time/reward_s": 0.5,
                "time/ref_logprobs_s": 0.25,
                "time/update_s": 2.0,
                "time/step_s": 6.0,
            },
        ),
        dict(
            stage="policy_rl",
            step=2,
            time=0.0,
            **{
                "time/rollout_s": 3.0,
                "time/reward_s": 0.5,
                "time/ref_logprobs_s": 0.75,
                "time/update_s": 2.0,
                "time/step_s": 8.0,
            },
        ),
        dict(stage="rm", step=1, time=0.0, loss=0.7),
    ]
    t = report.step_times(rows)
    assert set(t) == {"policy_rl"}
    assert t["policy_rl"] == {
        "rollout": 2.0,
        "reward": 0.5,
        "ref_logprobs": 0.5,
        "update": 2.0,
        "step": 7.0,
        "other": 2.0,
    }
