"""Stage `data`: build the synthetic world's TFDS files and the demo tokenizer (both cached), or,
with `config.data.kind = "files"`, read and check preference files on disk (`data_files`)."""

from __future__ import annotations

import json
import os

from grlhfv_jax import config as config_schema
from grlhfv_jax.config import sections
from grlhfv_jax.data import pipeline, sources
from grlhfv_jax.data import world as W
from grlhfv_jax.stages import ConfigError, check_section

SCHEMA = {
    "seed": (int, None, "an int"),
    "image_size": (int, lambda v: v >= 16 and v % 4 == 0, "a multiple of 4, >= 16"),
    "label_noise": ((int, float), lambda v: 0 <= v < 0.5, "a probability in [0, 0.5)"),
    "vocab_size": (int, lambda v: v >= 300, "an int >= 300"),
}


def world_config(config) -> W.WorldConfig:
    d = config_schema.section(config.data, sections.DATA)
    sizes = dict(d.sizes)
    for split in sizes:
        if split not in W.SPLITS:
            raise ConfigError(f"config.data.sizes: unknown split '{split}' (splits: {', '.join(W.SPLITS)})")
    analysis = d.sft_grm_analysis
    if analysis not in W.GRM_ANALYSIS_KINDS:
        raise ConfigError(f"config.data.sft_grm_analysis = {analysis!r}: expected one of {W.GRM_ANALYSIS_KINDS}")
    try:
        opinions = tuple((str(w), int(v)) for w, v in d.sft_grm_opinions)
    except (TypeError, ValueError):
        raise ConfigError(f"config.data.sft_grm_opinions = {d.sft_grm_opinions!r}: expected (style description, "
                          f"int) pairs, e.g. ((\"hedges\", 1), (\"praises itself\", -1))") from None
    try:
        return W.WorldConfig(seed=d.seed, image_size=d.image_size, label_noise=float(d.label_noise),
                             sft_grm_analysis=analysis, sizes=tuple({**W.DEFAULT_SIZES, **sizes}.items()),
                             sft_grm_first_scores=tuple(int(v) for v in d.sft_grm_first_scores),
                             sft_grm_second_scores=tuple(int(v) for v in d.sft_grm_second_scores),
                             sft_grm_opinions=opinions, sft_grm_opinion_strength=float(d.sft_grm_opinion_strength))
    except ValueError as e:
        raise ConfigError(f"config.data: {e}") from None


def data_dir(config, workdir: str) -> str:
    """config.data.dir (a bucket URL: its local mirror, `storage.local`), else workdir/data."""
    from grlhfv_jax import storage
    d = config_schema.section(config.data, sections.DATA).dir
    return storage.local(d) if d else os.path.join(workdir, "data")


def kind(config) -> str:
    """config.data.kind: "world" or "files" (ConfigError otherwise)."""
    k = config_schema.section(config.data, sections.DATA).kind
    if k not in ("world", "files"):
        raise ConfigError(f"config.data.kind = {k!r}: expected 'world' or 'files'")
    return k


def validate(config, section: str) -> None:
    if kind(config) == "files":
        return  # stages.validate checks a files run as a whole (data_files.check_config)
    check_section(config, section, SCHEMA)
    world_config(config)


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
        d = config_schema.section(config.data, sections.DATA)
        proc = None
        if d.image_workers > 0:   # the processor the stages' codec uses (common.codec): config.image's
            from grlhfv_jax.stages import common
            proc = common.image_processor(config_schema.section(config).image)
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
