"""Preemption on one process: SIGTERM / SIGINT during a train loop save at the next step boundary
and stop (`loop.Preempted`; the command line exits with `loop.PREEMPTED_EXIT_CODE`); the rerun
ends where an uninterrupted run ends. Checkpoints by the clock; a newest checkpoint that cannot be
restored falls back to the previous one; none good: a clear error and nothing deleted.

On 2 processes (`python -m grlhfv_jax.main` twice, jax.distributed over a loopback coordinator):
tests/test_multihost_pipeline.py's SIGTERM test (it reuses that module's uninterrupted 2-process
run as the reference); below, the two processes' agreement on each step's stop / save flags."""

import json
import os
import shutil
import signal
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grlhfv_jax import checkpoint
from grlhfv_jax.metrics import MetricsWriter
from grlhfv_jax.trainers import loop, steps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))


class _Toy(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.zeros((2,)))


def _fresh():
    return steps.TrainState(_Toy(), optax.sgd(0.1))


def _run(tmp_path, state, *, signal_at=None, signame="SIGTERM", total=6, seen=None, **kw):
    """The toy loop: w += step + 1 per step; `signal_at`: the step during which the signal arrives."""

    def step_fn(st, batch):
        if batch == signal_at:
            os.kill(os.getpid(), getattr(signal, signame))
        if seen is not None:
            seen.append(batch)
        st.model.w[...] = st.model.w[...] + batch + 1.0
        return st, {"loss": jnp.float32(batch)}

    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    try:
        args = dict(
            steps=total,
            make_batch=lambda s: s,
            step_fn=step_fn,
            writer=writer,
            ckpt_dir=str(tmp_path / "ck"),
            log_every=4,
            ckpt_every=100,
            ckpt_every_minutes=0,
        )
        args.update(kw)
        return loop.train_loop("toy", state, **args)
    finally:
        writer.close()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_next_step_and_the_rerun_ends_as_an_uninterrupted_run(signame, tmp_path, capsys):
    ref_state = _fresh()
    ref = _run(tmp_path / "ref", ref_state)
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    seen = []
    with pytest.raises(loop.Preempted) as e:
        _run(tmp_path, _fresh(), signal_at=2, signame=signame, seen=seen)
    assert (e.value.stage, e.value.step, e.value.signame) == ("toy", 3, signame)
    assert seen == [0, 1, 2]  # the step under way finished; no other started
    out = capsys.readouterr().out
    assert f"[toy] preempted ({signame}): checkpoint of step 3/6 saved in {tmp_path / 'ck'}" in out
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored
    assert sorted(os.listdir(tmp_path / "ck")) == ["3"]  # ckpt_every=100: the signal's checkpoint
    seen.clear()
    state = _fresh()
    again = _run(tmp_path, state, seen=seen)
    assert seen == [3, 4, 5]
    assert again == ref  # the metrics gathered before the signal were in the checkpoint
    np.testing.assert_array_equal(np.asarray(state.model.w[...]), np.asarray(ref_state.model.w[...]))


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    def step_fn(st, batch):
        if batch == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return st, {}

    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    with pytest.raises(KeyboardInterrupt):
        loop.train_loop(
            "toy",
            _fresh(),
            steps=4,
            make_batch=lambda s: s,
            step_fn=step_fn,
            writer=writer,
            ckpt_dir=str(tmp_path / "ck"),
            ckpt_every=100,
        )
    writer.close()
    assert not os.path.exists(tmp_path / "ck") or not [n for n in os.listdir(tmp_path / "ck") if n.isdigit()]


def test_checkpoints_by_the_clock(tmp_path, monkeypatch):
    """A clock one minute per step, ckpt_every_minutes=2.5 (ckpt_every out of reach): saves after
    steps 3 and 6 (150 s since the last save), and the final step 8."""
    saved = []
    save = checkpoint.Checkpointer.save

    def spy(self, step, *a, **kw):
        saved.append(int(step))
        return save(self, step, *a, **kw)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", spy)
    t = [0.0]

    def step_fn(st, batch):
        t[0] += 60.0
        return st, {}

    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    kw = dict(steps=8, make_batch=lambda s: s, step_fn=step_fn, writer=writer, ckpt_every=100, clock=lambda: t[0])
    loop.train_loop("toy", _fresh(), ckpt_dir=str(tmp_path / "a"), ckpt_every_minutes=2.5, **kw)
    assert saved == [3, 6, 8]
    saved.clear()
    loop.train_loop("toy", _fresh(), ckpt_dir=str(tmp_path / "b"), ckpt_every_minutes=0, **kw)
    assert saved == [8]  # 0: off
    saved.clear()
    monkeypatch.setitem(loop.stage_defaults, "ckpt_every_minutes", 4.0)  # what main.run sets per stage
    loop.train_loop("toy", _fresh(), ckpt_dir=str(tmp_path / "c"), **kw)
    assert saved == [4, 8]
    writer.close()


def _garble(step_dir):
    n = 0
    for root, _, files in os.walk(step_dir):
        for name in files:
            if not name.endswith(".json") and "state" in root:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
                n += 1
    assert n


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    ref_state = _fresh()
    ref = _run(tmp_path / "ref", ref_state, total=4)
    _run(tmp_path, _fresh(), total=3, ckpt_every=1)
    ck = tmp_path / "ck"
    assert sorted(os.listdir(ck)) == ["2", "3"]  # keep 2
    _garble(ck / "3")
    seen, state = [], _fresh()
    again = _run(tmp_path, state, total=4, ckpt_every=1, seen=seen)
    out = capsys.readouterr().out
    assert "WARNING: checkpoint step 3 in" in out and "cannot be restored" in out and "falling back to step 2" in out
    assert "[toy] resuming at step 2/4" in out
    assert seen == [2, 3]
    assert again == ref
    np.testing.assert_array_equal(np.asarray(state.model.w[...]), np.asarray(ref_state.model.w[...]))


def test_no_readable_checkpoint_is_a_clear_error_and_deletes_nothing(tmp_path):
    _run(tmp_path, _fresh(), total=3, ckpt_every=1)
    ck = tmp_path / "ck"
    for s in ("2", "3"):
        _garble(ck / s)
    listing = sorted(str(p.relative_to(ck)) for p in ck.rglob("*"))
    with pytest.raises(
        loop.ResumeError,
        match=r"(?s)\[toy\] cannot resume from the checkpoint in .*no checkpoint step "
        r"in it can be restored.*step 3: .*step 2: .*Delete .* to redo",
    ):
        _run(tmp_path, _fresh(), total=4, ckpt_every=1)
    assert sorted(str(p.relative_to(ck)) for p in ck.rglob("*")) == listing  # nothing deleted


def test_keep_at_least_two(tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        checkpoint.Checkpointer(str(tmp_path / "ck"), max_to_keep=1)


def test_ckpt_every_minutes_is_in_the_schema_with_its_range():
    import demo

    from grlhfv_jax import config as config_schema

    key = config_schema.lookup_key("grm_rl.ckpt_every_minutes")
    assert key.type == "float" and key.default == 30.0 and "0: off" in key.meaning
    config = demo.get_config("smoke")
    config.grm_rl.ckpt_every_minutes = -1.0
    with pytest.raises(config_schema.ConfigError, match=r"config\.grm_rl\.ckpt_every_minutes = -1\.0: must be >= 0"):
        config_schema.validate(config)


def test_the_command_line_exits_with_the_preempted_status(monkeypatch, tmp_path):
    from grlhfv_jax import main, sharding

    def preempted(config, workdir, restart=False, typed=None):
        raise loop.Preempted("grm_rl", 1, "SIGTERM")

    monkeypatch.setattr(main, "run", preempted)
    monkeypatch.setattr(sharding, "initialize_distributed", lambda: None)
    cfg = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")
    main.parse_flags(["main", f"--config={cfg}:smoke", f"--workdir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        main.main([])
    assert e.value.code == loop.PREEMPTED_EXIT_CODE == 75


def test_sigterm_mid_stage_of_the_smoke_pipeline_then_the_rerun_gives_the_uninterrupted_result(
    smoke_run, tmp_path, monkeypatch, capsys
):
    """The shared smoke run's folder with its last two stages (dpo, evaluate) undone: SIGTERM inside
    dpo's first step stops the run after that step's checkpoint, naming the stage and step; the
    rerun resumes dpo at step 1 and ends with the uninterrupted run's summary and DPO weights."""
    from safetensors.numpy import load_file

    from grlhfv_jax import main

    config, ref_dir, ref_summary = smoke_run
    workdir = shutil.copytree(ref_dir, str(tmp_path / "run"), ignore=shutil.ignore_patterns("dpo"))
    with open(os.path.join(workdir, main.RUN_STATE)) as f:
        state = json.load(f)
    for s in ("dpo", "evaluate"):
        state["stages"].pop(s)
    with open(os.path.join(workdir, main.RUN_STATE), "w") as f:
        json.dump(state, f)

    train_loop, calls = loop.train_loop, []

    def signalling_loop(name, st, *, step_fn, **kw):
        def step(s, batch):
            calls.append(name)
            if name == "dpo" and calls.count("dpo") == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return step_fn(s, batch)

        return train_loop(name, st, step_fn=step, **kw)

    monkeypatch.setattr(loop, "train_loop", signalling_loop)
    with pytest.raises(loop.Preempted) as e:
        main.run(config, workdir)
    assert (e.value.stage, e.value.step) == ("dpo", 1) and calls == ["dpo"]  # within one step
    out = capsys.readouterr().out
    assert f"[dpo] preempted (SIGTERM): checkpoint of step 1/2 saved in {os.path.join(workdir, 'dpo', 'ckpt')}" in out
    assert json.load(open(os.path.join(workdir, main.RUN_STATE)))["stages"]["dpo"]["status"] == "running"

    summary = main.run(config, workdir)
    out = capsys.readouterr().out
    assert "[dpo] resuming at step 1/2" in out and calls == ["dpo", "dpo"]
    timeless = lambda s: json.dumps(
        {k: v for k, v in s.items() if not k.startswith("time/")},  # noqa: E731
        sort_keys=True,
    )
    assert timeless(summary) == timeless(ref_summary)
    a, b = (load_file(os.path.join(d, "dpo", "policy", "model.safetensors")) for d in (ref_dir, workdir))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


_FLAGS_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)
pid, port, result = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
from grlhfv_jax.trainers import loop
flags = [
    loop.stop_and_save_flags(pid == 0, False),  # a signal on host 0 only
    loop.stop_and_save_flags(False, pid == 1),  # host 1's clock says save
    loop.stop_and_save_flags(False, False),
]
with open(result, "w") as f:  # not stdout: gloo's C++ log lines can land inside printed lines
    json.dump([list(map(bool, x)) for x in flags], f)
"""


def test_two_processes_agree_on_stopping_and_saving(tmp_path):
    """The stop / save decision of each step is the same on every host (loopback coordinator,
    gloo CPU collectives): a flag raised on one host is seen by all."""
    import socket
    import subprocess

    script = tmp_path / "flags.py"
    script.write_text(_FLAGS_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."), XLA_FLAGS="")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port, str(tmp_path / f"flags{i}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out[-3000:]
        flags = json.loads((tmp_path / f"flags{i}.json").read_text())
        assert flags == [[True, False], [False, True], [False, False]], out[-3000:]
