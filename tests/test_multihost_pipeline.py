"""The pipeline on a pod, shrunk: `python -m grlhfv_jax.main` on 2 real JAX processes x 4 CPU devices
(started with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID only: a loopback
coordinator, gloo CPU collectives) against 1 process x 8 CPU devices, on preference files
(config.data.kind = "files"): stages data, sft, grm_rl, rm, policy_rl, dpo, 2 steps each, tiny
Qwen2-VL models, every per-step batch 8 rows (sft's 16), a multiple of the 8 devices of the (1, 8, 1) mesh.

Checked: every line of metrics.jsonl (every stage's logged steps and evaluations), summary.json and
every exported Hugging Face folder (sft/policy, grm_rl/grm, rm/rm, policy_rl/policy, dpo/policy)
equal the one-process run's, to the tolerance below; process 0 alone writes the run's files.

A mutant in which each host treats its rows as the global batch (`sharding.global_batch` replaced,
at run time by `tests/multihost_driver.py`, with the one-process placement of the host's rows:
the old `place_batch`) fails that comparison: its data + sft run differs from the one-process run.

SIGTERM mid-stage on 2 processes: one host gets the signal inside dpo's first step (a pod's
hosts each get SIGTERM from their VM's preemption notice, not at the same instant; one host alone
is the hardest case of that); both hosts save at the same step boundary (`loop.stop_and_save_flags`),
print the line naming the stage and step and exit 75; the rerun (the same command) ends with the
uninterrupted 2-process run's summary and dpo weights, bit for bit.

Tolerance: rtol 1e-4, atol 1e-5 on float32 figures and parameters. Not exact: on 2 processes
the cross-host all-reduces run over gloo and add the partial sums in another order than XLA's
in-process all-reduce, so sums differ in the last bits; the stages train with AdamW, whose
m / sqrt(v) turns last-bit differences of gradients near zero into larger ones, and these pass
through 10 steps over 5 models (test_multihost.py's single steps with SGD hold to 2e-5 / 2e-6).
The mutant is off by orders of magnitude more.

Run alone: ``nice -n 19 python -m pytest -q tests/test_multihost_pipeline.py``.
The short demo (`configs/demo.py:smoke`, every stage) on 2 processes started with the three
variables only is `-m slow` (14.5 minutes on 2 busy cores, passed at b3392a2).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOL = dict(rtol=1e-4, atol=1e-5)
STAGES = ("data", "sft", "grm_rl", "rm", "policy_rl", "dpo")
EXPORTS = ("sft/policy", "grm_rl/grm", "rm/rm", "policy_rl/policy", "dpo/policy")
TIMEOUT = 900


def pipeline_config(root: str):
    """The files pipeline for fixture folder `root` (pairs.parquet, tokenizer/, grm/): tiny models,
    2 steps a stage, 8 rows per step (sft 16), a multiple of the 8 devices."""
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo

    small = demo.tiny_qwen2_vl(hidden=32, layers=1, heads=2, kv_heads=1, vision_depth=1, vision_dim=32)
    c = demo.get_config("smoke")
    c.stages = STAGES
    c.tensorboard = False
    c.report.enabled = False
    c.compile_cache_dir = None  # the tests' cache (JAX_COMPILATION_CACHE_DIR from conftest) when set
    for role in ("policy", "grm", "rm"):
        c.model[role].hf_config = small
    pairs = os.path.join(root, "pairs.parquet")
    c.data = dict(
        kind="files",
        tokenizer_dir=os.path.join(root, "tokenizer"),
        too_long="skip",
        files={s: dict(path=pairs) for s in ("sft_policy", "grm_train", "grm_test_id", "grm_test_ood", "policy_train")},
    )
    del c["sft"]["grm"]
    c.model.grm.path = os.path.join(root, "grm")
    # 16 rows: 8 a host, so the mutant (each host's rows as the whole batch) runs, with other numbers
    c.sft.policy.update(data="best", pretrained_vision=False, steps=2, batch_size=16, max_len=96)
    # 4 pairs x 2 orders x 2 samples = 16 rows (2 pairs a host: with 1, files_source.dataset fails on 2
    # hosts, grain's batch of 1 over an endless dataset); one mini-batch (docs/scaling.md: more split
    # the rows otherwise). The tiny GRM never writes a parseable judgment, so every reward is 0 and
    # so is every advantage: the entropy bonus makes both GRPO stages' updates move the weights.
    c.grm_rl.update(
        steps=2,
        pairs_per_step=4,
        group_size=2,
        mini_batches=1,
        eval_pairs=4,
        eval_every=2,
        eval_rows=4,
        max_len=160,
        max_new_tokens=4,
        entropy_coef=0.01,
    )
    c.rm.update(steps=2, pairs_per_step=4, eval_pairs=4, eval_rows=4, max_len=96)  # 4 pairs: 8 rows
    c.policy_rl.update(
        steps=2, prompts_per_step=4, n=2, max_len=96, max_new_tokens=4, judge_max_new_tokens=4, entropy_coef=0.01
    )
    c.dpo.update(steps=2, pairs_per_step=4, max_len=96)
    for sec in (c.sft.policy, c.grm_rl, c.rm, c.policy_rl, c.dpo):
        sec.warmup_ratio = 0.0  # both steps update (a warm-up's first step has lr 0)
    for sec in (c.sft, c.grm_rl, c.rm, c.policy_rl, c.dpo):
        sec.update(log_every=1, ckpt_every=100)  # the final checkpoint, and a stop's
    return c


def _write_fixtures(root) -> None:
    """8 preference pairs with images (parquet), a tokenizer trained on their words, a tiny GRM."""
    from flax import nnx

    from grlhfv_jax import encoding, models, roles
    from grlhfv_jax.data.tokenizer import train_tokenizer
    from grlhfv_jax.rl.grm_reward import build_grm_prompt
    from test_files_source import _rows, _write  # tests/ is on sys.path

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo

    rows = _rows(8)
    pq_path, _ = _write(root, "pairs", rows)
    shutil.copy(pq_path, root / "pairs.parquet")
    texts = [r[k] for r in rows for k in ("question", "response_1", "response_2")]
    texts += [build_grm_prompt("q", "a", "b", template=demo.DEMO_GRM_TEMPLATE)] * 20
    train_tokenizer(texts * 5, str(root / "tokenizer"), vocab_size=400)
    config = pipeline_config(str(root))
    codec = encoding.Codec.from_dirs(config.data.tokenizer_dir, config.image, config.grm_template)
    grm = models.from_config(roles.model_config(config.model.grm, codec), rngs=nnx.Rngs(1))
    models.save_pretrained(grm, str(root / "grm"))
    # A confident GRM: embeddings (tied to the output layer) of std 1, not 0.02 (next-token entropy ~1e-6). A random one's next-token
    # distribution is near uniform, where the entropy bonus's gradient is a sum of terms that almost
    # cancel: its float32 rounding, which differs between the runs, is then a large part of it, and
    # AdamW's normalised steps make that a difference of the learning rate's size.
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(root / "grm" / "model.safetensors"))
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * np.float32(50.0)
    save_file(weights, str(root / "grm" / "model.safetensors"), metadata={"format": "pt"})
    (root / "config.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "from test_multihost_pipeline import pipeline_config\n\n\n"
        f"def get_config():\n    return pipeline_config({str(root)!r})\n"
    )


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def start_processes(nproc: int, args: list[str], *, devices: int | None = None, driver: list[str] | None = None):
    """Starts `python -m grlhfv_jax.main ARGS` (or `python DRIVER... ARGS`) as `nproc` processes, each
    with `devices` CPU devices (XLA_FLAGS; default 8 / nproc) and, for several, only the three
    standard variables of jax.distributed."""
    devices = devices or 8 // nproc
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JAX_") or k.startswith(("JAX_COMPILATION", "JAX_PERSISTENT"))
    }
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]),
    )
    port = _free_port()
    procs = []
    for p in range(nproc):
        penv = dict(env)
        if nproc > 1:
            penv.update(
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(nproc), JAX_PROCESS_ID=str(p)
            )
        cmd = [sys.executable] + (driver or ["-m", "grlhfv_jax.main"]) + args
        procs.append(
            subprocess.Popen(cmd, env=penv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    return procs


def wait_processes(procs, expect=0, timeout=TIMEOUT) -> list[str]:
    """Each process's output, once all have ended; checks each exit status."""
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    codes = [p.returncode for p in procs]
    if codes != [expect] * len(procs):
        tails = [_tail(log) for log in logs]
        raise AssertionError(
            f"exit status {codes}, expected {expect}:\n"
            + "\n".join(f"--- process {i}:\n{t}" for i, t in enumerate(tails))
        )
    return logs


def _tail(log: str, n: int = 4000) -> str:
    """The end of a process's output without XLA's partitioner warnings."""
    return "\n".join(ln for ln in log.splitlines() if "spmd_partitioner" not in ln)[-n:]


def run_processes(nproc: int, args: list[str], *, expect=0, timeout=TIMEOUT, **kw) -> list[str]:
    return wait_processes(start_processes(nproc, args, **kw), expect=expect, timeout=timeout)


def _metrics(workdir) -> dict:
    """metrics.jsonl: the last line of each (stage key set, step), without wall-clock figures."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            figures = {
                k: v
                for k, v in row.items()
                if not k.startswith("time/") and k not in ("wall", "time") and "per_s" not in k and "sec" not in k
            }
            out[(row.get("stage"), row.get("step"), tuple(sorted(figures)))] = figures
    return out


def _summary(workdir) -> dict:
    with open(os.path.join(workdir, "summary.json")) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("time/")}


def _close(a, b, what):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
        for k in a:
            _close(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (int, float, list)) and not isinstance(a, bool):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), err_msg=what, **TOL)
    else:
        assert a == b, what


def compare_export(run, ref, out: str) -> None:
    """The safetensors of export `out` (e.g. "sft/policy") in run folders `run` and `ref`, to TOL."""
    from safetensors.numpy import load_file

    a, b = (load_file(os.path.join(d, out, "model.safetensors")) for d in (run, ref))
    assert a.keys() == b.keys() and len(a) > 10, out
    for k in a:
        np.testing.assert_allclose(a[k], b[k], err_msg=f"{out}: {k}", **TOL)


def compare(run, ref) -> None:
    """Run folder `run` equals `ref` to TOL: metrics.jsonl line by line, summary.json, the exports."""
    ma, mb = _metrics(run), _metrics(ref)
    assert sorted(ma, key=str) == sorted(mb, key=str), "metrics.jsonl: other lines"
    for key in mb:
        _close(ma[key], mb[key], f"metrics.jsonl {key[0]} step {key[1]}")
    _close(_summary(run), _summary(ref), "summary.json")
    for out in EXPORTS:
        compare_export(run, ref, out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The fixtures, then the pipeline on 1 process x 8 devices and on 2 processes x 4 devices:
    (fixture folder, one-process workdir, two-process workdir, the 2 processes'
    output). Test workers (pytest-xdist) share it, as conftest's smoke_run: the first to ask runs it
    under a file lock in their common temporary folder, the others wait and read its folders."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # <basetemp>/popen-gwN: the workers' common folder
        base = base.parent
    root = base / "pod_pipeline"
    one, two, done = str(root / "one"), str(root / "two"), root / "logs.json"
    with open(base / "pod_pipeline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.exists():
            return root, one, two, json.loads(done.read_text())
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        _write_fixtures(root)
        cfg = f"--config={root / 'config.py'}"
        # one after the other: under a heavy load gloo's connections between the 2 processes timed out
        # (30 s, fixed in XLA) when the 1-process run competed with their start
        run_processes(1, [cfg, f"--workdir={one}"])
        logs = run_processes(2, [cfg, f"--workdir={two}"])
        done.write_text(json.dumps(logs))
    return root, one, two, logs


def test_two_processes_run_the_files_pipeline_as_one_process(runs):
    _, one, two, logs = runs
    for stage in STAGES:
        assert f"[{stage}] done in" in logs[0], stage
    assert '"dpo/train_loss"' in logs[0] and '"dpo/train_loss"' in logs[1]  # both print the summary
    compare(two, one)
    # every metric of every stage is there (a stage that logged nothing would pass the comparison)
    logged = {k[0] for k in _metrics(one)}
    assert {"sft_policy", "grm_rl", "rm", "policy_rl", "dpo"} <= logged, logged


def test_hosts_that_treat_their_rows_as_the_global_batch_fail_the_comparison(runs, tmp_path):
    """The mutant: data + sft on 2 processes with `sharding.global_batch` placing each host's rows
    as if they were the whole batch; its sft metrics and weights are not the one-process run's."""
    root, one, two, _ = runs
    work = str(tmp_path / "mutant")
    run_processes(
        2,
        [f"--config={root / 'config.py'}", f"--workdir={work}", '--config.stages=("data", "sft")'],
        driver=[os.path.join(HERE, "multihost_driver.py"), "hosts_rows_as_global"],
    )
    ref, mutant, real = _metrics(one), _metrics(work), _metrics(two)
    sft_keys = [k for k in ref if k[0] == "sft_policy"]
    assert len(sft_keys) == 2 and all(k in mutant for k in sft_keys)
    for k in sft_keys:  # what the real 2-process run passes ...
        _close(real[k], ref[k], f"sft step {k[1]}")
    compare_export(two, one, "sft/policy")
    with pytest.raises(AssertionError, match=r"sft step 1\."):  # ... the mutant fails, from its first step
        for k in sft_keys:
            _close(mutant[k], ref[k], f"sft step {k[1]}")
    with pytest.raises(AssertionError, match="sft/policy"):
        compare_export(work, one, "sft/policy")


def test_sigterm_on_one_of_two_processes_mid_stage_then_the_rerun_gives_the_uninterrupted_result(runs, tmp_path):
    """The 2-process run's folder with dpo undone; process 1 alone gets SIGTERM inside dpo's first
    step: both processes save the checkpoint of step 1, print the line, and exit 75; the rerun
    (`python -m grlhfv_jax.main`, the same command) resumes dpo at step 1 and ends with the
    uninterrupted 2-process run's summary, metrics and dpo weights, exactly."""
    from grlhfv_jax import main

    root, _, two, _ = runs
    work = str(tmp_path / "run")
    shutil.copytree(two, work, ignore=shutil.ignore_patterns("dpo"))
    with open(os.path.join(work, main.RUN_STATE)) as f:
        state = json.load(f)
    state["stages"].pop("dpo")
    with open(os.path.join(work, main.RUN_STATE), "w") as f:
        json.dump(state, f)
    with open(os.path.join(work, "metrics.jsonl")) as f:  # dpo's lines undone too
        kept = [ln for ln in f if not any(k.startswith("dpo/") for k in json.loads(ln))]
    with open(os.path.join(work, "metrics.jsonl"), "w") as f:
        f.writelines(kept)
    cfg = f"--config={root / 'config.py'}"
    logs = run_processes(
        2, [cfg, f"--workdir={work}"], expect=75, driver=[os.path.join(HERE, "multihost_driver.py"), "sigterm:1:dpo:0"]
    )
    assert "[driver] SIGTERM to process 1 during dpo's step call 0" in logs[1]
    saved = f"checkpoint of step 1/2 saved in {os.path.join(work, 'dpo', 'ckpt')}"  # ckpt_every 100: the stop's
    assert f"[dpo] preempted (SIGTERM): {saved}" in logs[1], logs[1][-3000:]
    assert f"[dpo] preempted (a stop on another host): {saved}" in logs[0], logs[0][-3000:]
    for log in logs:  # within one step: the step under way finished, no other started
        assert "starts dpo's step call 0" in log and "starts dpo's step call 1" not in log
    with open(os.path.join(work, main.RUN_STATE)) as f:
        assert json.load(f)["stages"]["dpo"]["status"] == "running"
    logs = run_processes(2, [cfg, f"--workdir={work}"])
    assert "[dpo] resuming at step 1/2" in logs[0] and "[dpo] resuming at step 1/2" in logs[1]
    same = lambda x: json.dumps(x, sort_keys=True, default=str)
    assert same(_summary(work)) == same(_summary(two))
    assert same(sorted(_metrics(work).items())) == same(sorted(_metrics(two).items()))
    from safetensors.numpy import load_file

    a, b = (load_file(os.path.join(d, "dpo", "policy", "model.safetensors")) for d in (work, two))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_the_short_demo_runs_on_two_processes_started_with_the_standard_variables(tmp_path):
    """configs/demo.py:smoke, every stage, on 2 processes of one CPU device each, as a user starts
    them: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` and nothing else.
    Process 0 builds the world's files, the other reads them after a barrier (stages/data.py)."""
    work = str(tmp_path / "demo")
    logs = run_processes(
        2, [f"--config={os.path.join(ROOT, 'configs', 'demo.py')}:smoke", f"--workdir={work}"], devices=1, timeout=3600
    )
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import demo

    for stage in demo.get_config("smoke").stages:
        assert f"[{stage}] done in" in logs[0] and f"[{stage}] done in" in logs[1], stage
    summary = _summary(work)
    for key in ("grm/accuracy_id", "policy/oracle_score_after", "dpo/train_loss"):
        assert np.isfinite(summary[key]), key
    assert os.path.isfile(os.path.join(work, "report.html"))
