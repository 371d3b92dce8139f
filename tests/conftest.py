"""Test set-up: 8 fake CPU devices for sharding tests, no network."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# the precision a float32 run gets (grlhfv_jax.precision): the parity tests hold on GPUs / TPUs too
jax.config.update("jax_default_matmul_precision", "highest")
