"""The matmul precision policy (grlhfv_jax.precision): which precision a config asks for, that it
reaches the compiled matmuls, and that on CPU it changes no result."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from grlhfv_jax import config as config_schema
from grlhfv_jax import precision
from grlhfv_jax.config import ConfigError


def _config(dtypes, value=None):
    c = ml_collections.ConfigDict()
    c.model = {k: dict(dtype=d) for k, d in zip(("policy", "grm", "rm"), dtypes)}
    if value is not None:
        c.matmul_precision = value
    return c


@pytest.mark.parametrize(
    "dtypes, value, want",
    [
        (("float32",) * 3, None, "highest"),  # auto: fp32 compute is exact
        (("bfloat16",) * 3, None, "default"),  # auto: bf16 keeps the fast path
        (("bfloat16", "float32", "bfloat16"), "auto", "highest"),  # one fp32 model: exact for all
        (("bfloat16",) * 3, "highest", "highest"),
        (("float32",) * 3, "high", "high"),
        (("float32",) * 3, "default", "default"),
    ],
)
def test_resolve(dtypes, value, want):
    assert precision.resolve(_config(dtypes, value)) == want


def test_a_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"config.matmul_precision = 'fp32'.*highest"):
        precision.resolve(_config(("float32",), "fp32"))
    from configs import demo

    c = demo.get_config("smoke")
    c.matmul_precision = "fast"
    with pytest.raises(ConfigError, match="matmul_precision"):
        config_schema.validate(c)


@pytest.fixture
def restore_precision():
    before = jax.config.jax_default_matmul_precision
    yield
    jax.config.update("jax_default_matmul_precision", before)


def _hlo(a, b):
    return jax.jit(lambda x, y: jnp.tanh(x @ y)).lower(a, b).as_text()


def test_apply_reaches_the_compiled_matmuls(restore_precision):
    a = jnp.ones((8, 8), jnp.float32)
    assert precision.apply(_config(("bfloat16",) * 3)) == "default"
    assert "HIGHEST" not in _hlo(a, a)
    assert precision.apply(_config(("float32",) * 3)) == "highest"
    assert "precision = [HIGHEST, HIGHEST]" in _hlo(a, a)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU fact: GPUs / TPUs round at 'default'")
def test_on_cpu_highest_changes_no_bit():
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((64, 64)), jnp.float32) for _ in range(2))
    f = jax.jit(lambda x, y: jnp.tanh(x @ y) @ y.T)
    with jax.default_matmul_precision("highest"):
        hi = np.asarray(f(a, b))
    with jax.default_matmul_precision("default"):
        lo = np.asarray(jax.jit(lambda x, y: jnp.tanh(x @ y) @ y.T)(a, b))
    np.testing.assert_array_equal(hi, lo)
