"""Data: the synthetic preference world (world/), its TFDS builder (synthetic_tfds.py), grain
readers and the demo tokenizer cache (pipeline.py). See docs/data.md.

Only the pure-numpy world is imported here; `pipeline` and `synthetic_tfds` load grain / TFDS
when imported."""

from grlhfv_jax.data.world import (  # noqa: F401
    KINDS,
    PAIR_SPLITS,
    PROMPT_SPLITS,
    SPLITS,
    Scene,
    WorldConfig,
    generate_split,
    make_record,
    oracle_details,
    oracle_score,
    preference,
    render,
)
