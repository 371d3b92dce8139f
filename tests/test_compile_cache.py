"""The persistent compilation cache (grlhfv_jax.compile_cache): per-CPU folders, and a second
process reads the first one's programs back instead of compiling them."""

import json
import os
import subprocess
import sys

from grlhfv_jax import compile_cache

# Run in fresh interpreters: jax decides once per process whether it uses a cache.
_CHILD = r"""
import json, os, sys
import jax, jax.numpy as jnp
from grlhfv_jax import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = compile_cache.enable({"compile_cache_dir": sys.argv[2]}, sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the tiny program below too
y = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.arange(12.0).reshape(3, 4))
print(json.dumps({"path": path, "y": float(y),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _child(workdir, folder):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JAX_PERSISTENT_CACHE") and k != "JAX_COMPILATION_CACHE_DIR"
    }
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, str(workdir), folder], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_second_process_reads_the_programs_the_first_compiled(tmp_path):
    first, second = _child(tmp_path, "xla"), _child(tmp_path, "xla")
    root = os.path.join(str(tmp_path), "xla")
    assert first["path"] == second["path"] == compile_cache.machine_folder(root, "cpu")
    assert any(name.endswith("-cache") for name in os.listdir(first["path"]))
    assert first["hits"] == 0 and first["misses"] >= 1
    assert second["hits"] >= 1 and second["misses"] == 0
    assert second["y"] == first["y"]


def test_off_when_the_config_says_none(tmp_path):
    import jax

    if jax.config.jax_compilation_cache_dir:  # this process's cache (conftest) is kept, whatever the config
        assert compile_cache.enable({"compile_cache_dir": None}, str(tmp_path)) == jax.config.jax_compilation_cache_dir
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from grlhfv_jax import compile_cache; "
            "print(compile_cache.enable({'compile_cache_dir': None}, sys.argv[1]))",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "None"
    assert os.listdir(tmp_path) == []


def test_each_cpu_gets_its_own_folder(monkeypatch):
    """XLA compiles for the host's vector extensions, and jax's cache key does not name the CPU."""
    monkeypatch.setattr(compile_cache, "_cpu_identity", lambda: "model name=AMD EPYC | flags=avx avx2 fma")
    avx2 = compile_cache.machine_folder("/c", "cpu")
    monkeypatch.setattr(compile_cache, "_cpu_identity", lambda: "model name=AMD EPYC | flags=avx avx2 avx512f fma")
    avx512 = compile_cache.machine_folder("/c", "cpu")
    assert avx2 != avx512 and os.path.dirname(avx2) == os.path.dirname(avx512) == "/c"
    assert compile_cache.machine_folder("/c", "gpu").startswith("/c/gpu-")
    monkeypatch.undo()
    assert compile_cache.machine_folder("/c") == compile_cache.machine_folder("/c")  # stable on one machine
