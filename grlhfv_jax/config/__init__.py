"""Typed config schemas: every key's type, default, constraint and meaning, and each section's
cross-key rules (`sections.py`), checked once before anything heavy starts. An unknown key, a badly
typed or out-of-range value, a broken rule is a one-line ConfigError naming the full dotted key
(and, for a typo, the nearest valid key).

    validate(config)            the config checked and frozen (`Frozen`): what main and the stages read
    typed_section(node, values) one section checked and frozen (entry points that build a section)
    check(config)               raises ConfigError on an unknown key, a bad type or an out-of-range value
    apply_overrides(config, a)  `--config.a.b=v` arguments typed by the schema and set (`overrides.py`)
    check_overrides(argv)       their dotted paths checked against the schema, before parsing
    lookup_key("a.b")           the schema key of a dotted path (None inside an open map)
    describe("grm_rl")          the listing of a section: key, type, default, constraint, meaning
    placeholders(config)        (key, value) still holding a "<...>" placeholder (paths left to the command line)
"""

from __future__ import annotations

import ml_collections

from grlhfv_jax.config import sections
from grlhfv_jax.config.overrides import apply_overrides, check_overrides, lookup_key
from grlhfv_jax.config.schema import (
    REQUIRED,
    ConfigError,
    Frozen,
    FrozenError,
    Key,
    Section,
    build,
    describe_lines,
    lookup,
    run_rules,
)
from grlhfv_jax.config.schema import check as _check
from grlhfv_jax.config.sections import CONFIG, STAGE_SECTIONS

__all__ = [
    "CONFIG",
    "REQUIRED",
    "STAGE_SECTIONS",
    "ConfigError",
    "Frozen",
    "FrozenError",
    "Key",
    "Section",
    "apply_overrides",
    "check",
    "check_overrides",
    "describe",
    "lookup_key",
    "placeholders",
    "sections",
    "typed_section",
    "validate",
]


def check(config) -> None:
    """Raises ConfigError for the first unknown key, badly typed or out-of-range value in `config`."""
    _check(CONFIG, config)


def validate(config, *, complete: bool = True) -> Frozen:
    """The one validation of a run's config (a ConfigDict or dict; `config` itself is unchanged):
    unknown keys, types, constraints, the keys the running stages need, then every rule of the
    sections they read. Returns it frozen and typed with every default filled in; ConfigError names
    the first bad key. A Frozen config is returned as it is (validated already). `complete=False`:
    keys, types, constraints and defaults only, for a config read back for a few of its sections
    (export.py reads a run's model entries and image settings)."""
    if isinstance(config, Frozen):
        return config
    if not complete:
        return build(CONFIG, config, "", lambda path: False)
    stages = config["stages"] if "stages" in config else ()
    reads = {"data"} | {STAGE_SECTIONS[s] for s in stages if isinstance(s, str) and s in STAGE_SECTIONS}

    def used(path: str) -> bool:  # the root's own keys, and the sections the running stages read
        return path == "" or path.split(".")[0] in reads

    frozen = build(CONFIG, config, "", used)
    run_rules(CONFIG, frozen, "", frozen, used)
    return frozen


def typed_section(node: dict, values, path: str = "") -> Frozen:
    """One section (`node`, e.g. `sections.MODEL`) of `values` checked, defaults filled, its
    rules run, frozen: for entry points that build a section themselves (evaluate.py's model spec
    holds its dtypes only: the section's REQUIRED keys are not asked for)."""
    frozen = build(node, values, path, lambda p: False)
    run_rules(node, frozen, path, frozen, lambda p: True)
    return frozen


def describe(section: str = "") -> str:
    """The listing of `section` (a dotted path such as "grm_rl" or "sft.policy"; "" = everything):
    one line per key with its type, default ("required": none), [constraint] and meaning."""
    node = lookup(CONFIG, section) if section else CONFIG
    head = f"{'key':<34} {'type':<7} {'default':<16} [constraint] meaning"
    return "\n".join([head] + describe_lines(node, section))


def is_placeholder(value) -> bool:
    """A string "<...>": a value the config file leaves to the command line (e.g. a checkpoint path)."""
    return isinstance(value, str) and len(value) > 2 and value.startswith("<") and value.endswith(">")


def placeholders(config, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every value of `config` that is still a placeholder (`is_placeholder`)."""
    found = []
    for key in config:
        value, full = config[key], f"{path}.{key}" if path else key
        if isinstance(value, (dict, ml_collections.ConfigDict, Frozen)):
            found += placeholders(value, full)
        elif is_placeholder(value):
            found.append((full, value))
    return found
