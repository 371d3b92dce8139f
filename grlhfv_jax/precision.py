"""The run's matmul precision policy (`config.matmul_precision`), one for every model of a run.

On GPUs (TF32 tensor cores) and TPUs XLA's default precision rounds fp32 matmul operands to
~10-bit mantissas: measured on an H200, tiny-model logits moved 4.5e-3 from transformers' and the
sampler's log-probs 1.9e-3 from the trainer's. A model that computes in float32 is meant to be
exact, so "auto" asks for the highest precision then, and leaves bf16 compute on the fast path:

- "auto": "highest" when any model of the run computes in float32, else the platform default;
- "highest" / "high" / "default": that, for every matmul of the run (trainer and sampler).

CPU matmuls are fp32-exact at any setting (the results are bit-identical; checked in tests).
"""

from __future__ import annotations

import jax

from grlhfv_jax.config.schema import ConfigError

CHOICES = ("auto", "highest", "high", "default")


def resolve(config) -> str:
    """The precision `config` asks for: "highest", "high" or "default"."""
    value = config.get("matmul_precision", "auto")
    if value not in CHOICES:
        raise ConfigError(f"config.matmul_precision = {value!r}: expected one of {CHOICES}")
    if value != "auto":
        return value
    dtypes = {str(spec.get("dtype", "float32")) for spec in config.get("model", {}).values()}
    return "highest" if "float32" in dtypes or not dtypes else "default"


def apply(config) -> str:
    """Sets jax's default matmul precision for the rest of the process; returns it."""
    value = resolve(config)
    jax.config.update("jax_default_matmul_precision", None if value == "default" else value)
    return value
