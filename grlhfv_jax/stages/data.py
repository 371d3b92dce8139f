"""Stage `data`: build the synthetic world's TFDS files and the demo tokenizer (both cached), or,
with `config.data.kind = "files"`, read and check preference files on disk (`data_files`)."""

from __future__ import annotations

import json
import os

from grlhfv_jax.data import pipeline
from grlhfv_jax.data import world as W
from grlhfv_jax import roles


def run(config, workdir: str, writer, section: str) -> dict:
    if roles.kind(config) == "files":
        from grlhfv_jax.data import files_convert as data_files
        return data_files.run(config, workdir, roles.data_dir(config, workdir))
    world = roles.world_config(config)
    extra = []
    if config.grm_template:  # its fixed words become single tokens: short GRM prompts
        from grlhfv_jax.rl.grm_reward import build_grm_prompt
        extra = [build_grm_prompt("What colour are the objects?", "They are red.", "They are blue.",
                                  template=config.grm_template)] * 50
    out = pipeline.prepare(roles.data_dir(config, workdir), world, vocab_size=config.data.vocab_size, extra_texts=extra,
                           special_tokens=roles.prompt_format(config).special_tokens)
    out["data_dir"] = roles.data_dir(config, workdir)
    with open(os.path.join(workdir, "data_paths.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"[data] dataset {out['dataset_dir']}, tokenizer {out['tokenizer_dir']}", flush=True)
    return {f"data/size_{s}": world.size(s) for s in W.SPLITS}


def memory_phases(config, section: str) -> list:
    """None for the dry run to price (it trains nothing)."""
    return []
