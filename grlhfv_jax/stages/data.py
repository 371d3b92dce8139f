"""Stage `data`: build the synthetic world's TFDS files and the demo tokenizer (both cached), or,
with `config.data.kind = "files"`, read and check preference files on disk (`data_files`)."""

from __future__ import annotations

import json
import os

import jax

from grlhfv_jax import roles
from grlhfv_jax.data import pipeline
from grlhfv_jax.data import world as W


def run(config, workdir: str, writer, section: str) -> dict:
    if roles.kind(config) == "files":
        from grlhfv_jax.data import files_convert as data_files

        return data_files.run(config, workdir, roles.data_dir(config, workdir))
    world = roles.world_config(config)
    extra = []
    if config.grm_template:  # its fixed words become single tokens: short GRM prompts
        from grlhfv_jax.rl.grm_reward import build_grm_prompt

        extra = [
            build_grm_prompt(
                "What colour are the objects?", "They are red.", "They are blue.", template=config.grm_template
            )
        ] * 50

    def prepare():
        return pipeline.prepare(
            roles.data_dir(config, workdir),
            world,
            vocab_size=config.data.vocab_size,
            extra_texts=extra,
            special_tokens=roles.prompt_format(config).special_tokens,
        )

    if jax.process_count() == 1:
        out = prepare()
    else:  # one folder for all processes: process 0 builds, the others then read its cached files
        from jax.experimental import multihost_utils

        out = prepare() if jax.process_index() == 0 else None
        multihost_utils.sync_global_devices("grlhfv_jax data: world files built by process 0")
        out = out or prepare()
    out["data_dir"] = roles.data_dir(config, workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "data_paths.json"), "w") as f:
            json.dump(out, f, indent=2)
    print(f"[data] dataset {out['dataset_dir']}, tokenizer {out['tokenizer_dir']}", flush=True)
    return {f"data/size_{s}": world.size(s) for s in W.SPLITS}


def memory_phases(config, section: str) -> list:
    """None for the dry run to price (it trains nothing)."""
    return []
