"""main.prepare_workdir on a workdir shared by several JAX processes: only process 0 writes
run_state.json and config.json (atomically: no temporary file left); the others write nothing.
main.run drops jax's compiled programs between stages."""

import json
import os

import jax
import ml_collections

from grlhfv_jax import main


def _config(seed=0):
    return ml_collections.ConfigDict({"seed": seed, "stages": ["data"], "data": {"source": "files"}})


def _as_process(monkeypatch, index):
    monkeypatch.setattr(jax, "process_index", lambda: index)


def test_only_process_0_writes_the_run_files(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    _as_process(monkeypatch, 1)
    state = main.prepare_workdir(_config(), workdir, restart=False)
    assert state == {"config": json.loads(_config().to_json_best_effort()), "stages": {}}
    assert os.listdir(workdir) == [], "process 1 wrote into the shared workdir"
    main._write_run_state(workdir, {**state, "stages": {"data": {"status": "running"}}})  # run()'s stage records
    assert os.listdir(workdir) == [], "process 1 wrote its run state"

    _as_process(monkeypatch, 0)
    state = main.prepare_workdir(_config(), workdir, restart=False)
    assert sorted(os.listdir(workdir)) == ["config.json", main.RUN_STATE]  # no temporary file left
    with open(os.path.join(workdir, main.RUN_STATE)) as f:
        assert json.load(f) == state
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f) == json.loads(_config().to_json_best_effort())
    state["stages"]["data"] = {"status": "done", "wall_s": 1.0}
    main._write_run_state(workdir, state)

    # a rerun: process 1 reads process 0's state and writes nothing; under --restart it deletes nothing
    _as_process(monkeypatch, 1)
    before = {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)}
    assert main.prepare_workdir(_config(), workdir, restart=False)["stages"] == state["stages"]
    assert main.prepare_workdir(_config(), workdir, restart=True)["stages"] == {}
    assert {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)} == before


def test_only_process_0_writes_the_summary(tmp_path, monkeypatch):
    from grlhfv_jax import metrics

    _as_process(monkeypatch, 1)
    assert metrics.update_summary(str(tmp_path), {"a": 1.0, "b": float("nan")}) == {"a": 1.0, "b": None}
    assert os.listdir(tmp_path) == [], "process 1 wrote summary.json"
    _as_process(monkeypatch, 0)
    metrics.update_summary(str(tmp_path), {"a": 1.0})
    metrics.update_summary(str(tmp_path), {"c": "text"})
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == {"a": 1.0, "c": "text"}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_restart_waits_for_process_0s_deletion(tmp_path, monkeypatch):
    """Under --restart with several processes every process passes a barrier after process 0 has
    deleted the previous run and before it goes on; a plain rerun or one process needs none."""
    from jax.experimental import multihost_utils

    workdir = str(tmp_path / "run")
    _as_process(monkeypatch, 0)
    main.prepare_workdir(_config(), workdir, restart=False)
    with open(os.path.join(workdir, "old_checkpoint"), "w") as f:
        f.write("previous run")
    seen = []  # (process, was the previous run still there) at each barrier
    monkeypatch.setattr(
        multihost_utils,
        "sync_global_devices",
        lambda name: seen.append((jax.process_index(), os.path.exists(os.path.join(workdir, "old_checkpoint")))),
    )
    main.prepare_workdir(_config(), workdir, restart=True)  # one process: no barrier
    assert seen == []
    with open(os.path.join(workdir, "old_checkpoint"), "w") as f:
        f.write("previous run")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    main.prepare_workdir(_config(), workdir, restart=False)  # a rerun deletes nothing: no barrier
    assert seen == []
    _as_process(monkeypatch, 1)
    main.prepare_workdir(_config(), workdir, restart=True)  # process 1 waits (and deletes nothing)
    _as_process(monkeypatch, 0)
    main.prepare_workdir(_config(), workdir, restart=True)
    assert seen == [(1, True), (0, False)], seen
    assert not os.path.exists(os.path.join(workdir, "old_checkpoint"))


def test_run_drops_the_compiled_programs_between_stages(tmp_path, monkeypatch):
    """A program compiled in one stage is gone from jax's caches when the next stage starts (their
    memory maps count against vm.max_map_count: main.release_compiled_programs)."""
    import sys

    import jax.numpy as jnp

    from grlhfv_jax import stages

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo

    f = jax.jit(lambda x: x + 1)
    seen = []

    def run_stage(name, config, workdir, writer):
        seen.append((name, f._cache_size()))
        f(jnp.ones(3))
        return {}

    monkeypatch.setattr(stages, "run_stage", run_stage)
    config = demo.get_config("smoke")
    config.stages = ["data", "vision"]
    config.report.enabled = False
    main.run(config, str(tmp_path / "run"))
    assert seen == [("data", 0), ("vision", 0)]
