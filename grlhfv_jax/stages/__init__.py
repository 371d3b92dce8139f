"""Stage registry: each stage is `run(config, workdir, writer) -> dict of summary metrics`.

Stages read what earlier stages wrote in the workdir (Hugging Face model folders under
`workdir/<stage>/...`) and write their own. The keys, types and defaults of every section live in
`grlhfv_jax.config`; each stage module declares `SCHEMA`: the keys its config section must hold,
with a check of their values, so a bad config fails before any compilation with an error that
names the key. Stages read the config `validate` returns, which holds every default.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from grlhfv_jax import config as config_schema
from grlhfv_jax import precision
from grlhfv_jax.config import ConfigError
from grlhfv_jax import roles

# stage name -> module (under grlhfv_jax.stages) and the config section it reads.
STAGES = {
    "data": ("data", "data"),
    "vision": ("vision", "vision"),
    "sft": ("sft", "sft"),
    "grm_rl": ("grm_rl", "grm_rl"),
    "rm": ("rm", "rm"),
    "policy_rl": ("policy_rl", "policy_rl"),
    "policy_rl_rm": ("policy_rl", "policy_rl_rm"),
    "policy_ppo_rm": ("policy_ppo_rm", "policy_ppo_rm"),
    "dpo": ("dpo", "dpo"),
    "evaluate": ("evaluate", "evaluate"),
    "nscale": ("nscale", "nscale"),
}


def stage_module(name: str):
    """The module of stage `name` (by the registry: a stage that runs another, as `nscale` runs
    `policy_rl`, finds it here instead of importing it)."""
    return importlib.import_module(f"grlhfv_jax.stages.{STAGES[name][0]}")


def check_section(config, section: str, schema: dict[str, tuple[type | tuple, Callable[[Any], bool] | None, str]]):
    """Checks `config.<section>` (a dotted path) against `schema`: key -> (types, predicate or None,
    what it must be)."""
    sec = config
    for part in section.split("."):
        if part not in sec:
            raise ConfigError(f"config.{section} is missing (needed by the '{section.split('.')[0]}' stage)")
        sec = sec[part]
    for key, (types, pred, what) in schema.items():
        if key not in sec:
            raise ConfigError(f"config.{section}.{key} is missing ({what})")
        value = sec[key]
        if types is not None and not isinstance(value, types):
            raise ConfigError(f"config.{section}.{key} = {value!r}: expected {what}")
        if pred is not None and not pred(value):
            raise ConfigError(f"config.{section}.{key} = {value!r}: must be {what}")


def validate(config):
    """Validates the whole config; raises ConfigError naming the first bad key. Returns a copy of
    `config` with every default filled in (`config` itself is unchanged): what the stages read."""
    config = config_schema.with_defaults(config)  # unknown keys, types
    if "stages" not in config or not config.stages:
        raise ConfigError("config.stages is missing or empty")
    for name in config.stages:
        if name not in STAGES:
            raise ConfigError(f"config.stages: unknown stage '{name}' (known: {', '.join(STAGES)})")
    if "mesh_shape" in config:
        shape = tuple(config.mesh_shape)
        if len(shape) != 3 or sum(1 for d in shape if d == -1) > 1 or any(d == 0 or d < -1 for d in shape):
            raise ConfigError(f"config.mesh_shape = {shape}: expected 3 positive sizes over "
                                                "(data, fsdp, tensor), at most one -1")
    precision.resolve(config)
    from grlhfv_jax.models.layers import REMAT_POLICIES
    for role, spec in (config.model.items() if "model" in config else ()):
        if spec.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"config.model.{role}.remat_policy = {spec.remat_policy!r}: expected one of "
                              f"{', '.join(REMAT_POLICIES)}")
        if spec.logits_chunk < 0:
            raise ConfigError(f"config.model.{role}.logits_chunk = {spec.logits_chunk}: expected 0 (off) or a "
                              "positive number of columns")
        if spec.vision_chunk < 0:
            raise ConfigError(f"config.model.{role}.vision_chunk = {spec.vision_chunk}: expected 0 (off) or a "
                              "positive number of patches")
    for name in config.stages:  # the time-based checkpoint interval of each training section
        sec = config[STAGES[name][1]] if STAGES[name][1] in config else {}
        if "ckpt_every_minutes" in sec and not sec.ckpt_every_minutes >= 0:
            raise ConfigError(f"config.{STAGES[name][1]}.ckpt_every_minutes = {sec.ckpt_every_minutes}: expected "
                              ">= 0 (0: no checkpoints by the clock)")
    if "data" in config and roles.kind(config) == "files":
        from grlhfv_jax.data import files_convert as data_files
        data_files.check_config(config)
    for name in config.stages:
        module = stage_module(name)
        module.validate(config, STAGES[name][1])
    return config


def run_stage(name: str, config, workdir: str, writer) -> dict:
    """Runs stage `name` on a copy of `config` with its defaults filled in."""
    module = stage_module(name)
    return module.run(config_schema.with_defaults(config), workdir, writer, section=STAGES[name][1])
