"""Stage `data`: build the synthetic world's TFDS files and the demo tokenizer (both cached), or,
with `config.data.kind = "files"`, read and check preference files on disk (`data_files`)."""

from __future__ import annotations

import json
import os

from grlhfv_jax.data import pipeline, sources
from grlhfv_jax.data import world as W
from grlhfv_jax.data.world.config import from_section


def world_config(config) -> W.WorldConfig:
    """The synthetic world of the validated `config.data` (its rule checked it: config.sections)."""
    return from_section(config.data)


def data_dir(config, workdir: str) -> str:
    """config.data.dir (a bucket URL: its local mirror, `storage.local`), else workdir/data."""
    from grlhfv_jax import storage
    d = config.data.dir
    return storage.local(d) if d else os.path.join(workdir, "data")


def kind(config) -> str:
    """config.data.kind: "world" or "files"."""
    return config.data.kind


def paths(config, workdir: str) -> dict:
    """The dataset and tokenizer folders written by this stage."""
    path = os.path.join(workdir, "data_paths.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run the 'data' stage first (add it to config.stages)")
    with open(path) as f:
        return json.load(f)


def source(config, workdir: str):
    """The run's data source (`data.sources`): the synthetic world this stage wrote, or the
    preference files it checked (`data_files.source`)."""
    found = paths(config, workdir)
    written = found["kind"] if "kind" in found else "world"   # the world's data_paths.json names no kind
    if written != kind(config):
        raise ValueError(f"{os.path.join(workdir, 'data_paths.json')} was written for config.data.kind = "
                         f"{written!r}, not {kind(config)!r}: rerun the 'data' stage")
    if kind(config) == "files":
        from grlhfv_jax.stages import data_files
        d = config.data
        proc = None
        if d.image_workers > 0:   # the processor the stages' codec uses (common.codec): config.image's
            from grlhfv_jax.stages import common
            proc = common.image_processor(config.image)
        return data_files.source(found, d.read_threads, d.image_workers, proc)
    return sources.WorldSource(found["data_dir"], world_config(config))


def hooks(config) -> sources.WorldHooks | None:
    """The evaluation hooks of the run's source, before its data exists (for validation): None for files."""
    return sources.WorldHooks() if kind(config) == "world" else None


def run(config, workdir: str, writer, section: str) -> dict:
    if kind(config) == "files":
        from grlhfv_jax.stages import data_files
        return data_files.run(config, workdir, data_dir(config, workdir))
    world = world_config(config)
    extra = []
    if config.grm_template:  # its fixed words become single tokens: short GRM prompts
        from grlhfv_jax.rl.grm_reward import build_grm_prompt
        extra = [build_grm_prompt("What colour are the objects?", "They are red.", "They are blue.",
                                  template=config.grm_template)] * 50
    out = pipeline.prepare(data_dir(config, workdir), world, vocab_size=config.data.vocab_size, extra_texts=extra)
    out["data_dir"] = data_dir(config, workdir)
    with open(os.path.join(workdir, "data_paths.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(f"[data] dataset {out['dataset_dir']}, tokenizer {out['tokenizer_dir']}", flush=True)
    return {f"data/size_{s}": world.size(s) for s in W.SPLITS}


def memory_phases(config, section: str) -> list:
    """None for the dry run to price (it trains nothing)."""
    return []
