"""Test set-up: 8 fake CPU devices for sharding tests, no network."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# One persistent compilation cache for the test workers, the subprocesses they start (the resume
# test restarts the pipeline 19 times) and later test runs on this machine (grlhfv_jax.compile_cache).
from grlhfv_jax import compile_cache  # noqa: E402  (imports no jax)

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    compile_cache.machine_folder(os.path.join(tempfile.gettempdir(), f"grlhfv_jax_tests_xla_{os.getuid()}")),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(compile_cache.MIN_COMPILE_SECONDS))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# the precision a float32 run gets (grlhfv_jax.precision): the parity tests hold on GPUs / TPUs too
jax.config.update("jax_default_matmul_precision", "highest")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module: drop jax's compiled programs (their jitted code holds memory maps:
    ~28,000 after two test files, and a test worker that reaches the kernel's limit of 65,530,
    vm.max_map_count, segfaults inside the next compile). Later modules recompile or read the
    persistent compilation cache."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke pipeline (configs/demo.py:smoke), run once per test run: (config, workdir, summary).
    Test workers (pytest-xdist) share it: the first to ask runs it under a file lock in their
    common temporary folder, the others wait for it and read its summary. Tests read its
    outputs (copy the folder before changing it)."""
    import fcntl
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
    import demo

    from grlhfv_jax import main

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # <basetemp>/popen-gwN: the workers' common folder
        root = root.parent
    workdir, done = root / "smoke_run", root / "smoke_run_summary.json"
    config = demo.get_config("smoke")
    with open(root / "smoke_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.exists():
            return config, str(workdir), json.loads(done.read_text())
        summary = main.run(config, str(workdir))
        done.write_text(json.dumps(summary))
    return config, str(workdir), summary
