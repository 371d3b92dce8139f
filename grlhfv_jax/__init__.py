"""grlhfv_jax: Generative RLHF-V for vision-language models in JAX / Flax NNX."""

__version__ = "0.1.0"
