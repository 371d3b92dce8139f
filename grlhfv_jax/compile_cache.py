"""The persistent XLA compilation cache (`config.compile_cache_dir`).

A run that restarts (after a preemption, a crash, `--restart`, or a sweep over seeds in one
workdir) reads its compiled programs back from disk instead of compiling them again: jax's
persistent cache, keyed by the program, the jaxlib version, the compile options and the devices.

On CPU that key does not name the processor, and XLA compiles for the host's vector extensions
(AVX-512 on one machine, AVX2 on another): a folder shared between two CPUs could hand one of
them code it cannot run. So the cache lives in a subfolder named by the platform and a hash of
the host CPU's model and flags (`machine_folder`).

Nothing here imports jax at module level: tests/conftest.py uses `machine_folder` before jax is
imported, so that every test worker and every subprocess shares one cache through the
environment (JAX_COMPILATION_CACHE_DIR).
"""

from __future__ import annotations

import hashlib
import os
import platform

# Programs that compile faster than this are not written (jax's default is 1 s; most of ours
# take 0.3-4 s on a CPU, and reading one back takes milliseconds).
MIN_COMPILE_SECONDS = 0.3


def _cpu_identity() -> str:
    """The host CPU's model name and feature flags (Linux: /proc/cpuinfo), else platform's."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")  # x86, then ARM
    first = {}
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in wanted and key not in first:
            first[key] = " ".join(sorted(value.split()))
    return " | ".join(f"{k}={first[k]}" for k in wanted if k in first) or platform.machine()


def machine_folder(root: str, platform_name: str = "cpu") -> str:
    """`root/<platform>-<12 hex digits of the CPU's identity>`."""
    digest = hashlib.sha256(_cpu_identity().encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser(root), f"{platform_name}-{digest}")


def enable(config, workdir: str) -> str | None:
    """Turns the cache on for the rest of the process; returns the folder in use (None: off).

    `config.compile_cache_dir`: a folder (relative to `workdir` unless absolute) or None. A cache
    folder already set for this process (JAX_COMPILATION_CACHE_DIR, or an earlier run in the
    same process) is kept: jax reads the setting once, at its first compilation.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    root = config.get("compile_cache_dir")
    if not root:
        return None
    root = root if os.path.isabs(os.path.expanduser(root)) else os.path.join(workdir, root)
    path = machine_folder(root, jax.default_backend())
    os.makedirs(path, exist_ok=True)
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    compilation_cache.reset_cache()  # jax decides once whether to use a cache: after any earlier compile too
    return path
