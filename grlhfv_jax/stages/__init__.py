"""Stage registry: each stage is `run(config, workdir, writer, section) -> dict of summary metrics`.

Stages read what earlier stages wrote in the workdir (Hugging Face model folders under
`workdir/<stage>/...`) and write their own. A stage receives the config `grlhfv_jax.config.validate`
returned (frozen, typed, every default filled in): every key's type, default, constraint and the
rules between keys live in `grlhfv_jax.config`, and a stage reads `config[section]` as it is.
"""

from __future__ import annotations

import importlib

from grlhfv_jax import config as config_schema
from grlhfv_jax.config import STAGE_SECTIONS, ConfigError  # noqa: F401  (ConfigError: for the stage modules)

# stage name -> module (under grlhfv_jax.stages) and the config section it reads (config.STAGE_SECTIONS).
MODULES = {
    "data": "data",
    "vision": "vision",
    "sft": "sft",
    "grm_rl": "grm_rl",
    "rm": "rm",
    "policy_rl": "policy_rl",
    "policy_rl_rm": "policy_rl",
    "policy_ppo_rm": "policy_ppo_rm",
    "dpo": "dpo",
    "evaluate": "evaluate",
    "nscale": "nscale",
}
STAGES = {name: (module, STAGE_SECTIONS[name]) for name, module in MODULES.items()}


def module(name: str):
    """The module of stage `name` (its run and memory_phases). A stage that runs another, as `nscale`
    runs `policy_rl`, finds it here instead of importing it."""
    return importlib.import_module(f"grlhfv_jax.stages.{STAGES[name][0]}")


def run_stage(name: str, config, workdir: str, writer) -> dict:
    """Runs stage `name` on `config`: the validated config (a raw ConfigDict is validated first)."""
    return module(name).run(config_schema.validate(config), workdir, writer, section=STAGES[name][1])
