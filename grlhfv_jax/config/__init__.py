"""Typed config schemas: every key's type, default and meaning (`sections.py`), checked before
anything heavy starts. An unknown key or a badly typed value is a one-line ConfigError naming the
full dotted key (and, for a typo, the nearest valid key).

    check(config)          raises ConfigError on an unknown key or a bad type
    with_defaults(config)  a checked copy with every absent defaulted key filled in
    check_overrides(argv)  the same for `--config.a.b=v` command-line overrides, before parsing
    lookup_key("a.b")      the schema key of a dotted path (None inside an open map)
    describe("grm_rl")     the listing of a section: key, type, default, meaning
    placeholders(config)   (key, value) still holding a "<...>" placeholder (paths left to the command line)
"""

from __future__ import annotations

import ml_collections

from grlhfv_jax.config.schema import REQUIRED, ConfigError, Key, describe_lines, fill, lookup
from grlhfv_jax.config.schema import check as _check
from grlhfv_jax.config.sections import CONFIG

__all__ = ["CONFIG", "REQUIRED", "ConfigError", "Key", "check", "check_overrides", "describe", "lookup_key",
           "placeholders", "section", "with_defaults"]


def check(config) -> None:
    """Raises ConfigError for the first unknown key or badly typed value anywhere in `config`."""
    _check(CONFIG, config)


def with_defaults(config):
    """A checked, reference-resolved copy of `config` (a ConfigDict) holding every key that has a
    default; `config` itself is unchanged."""
    check(config)
    return section(config, CONFIG)


def section(values, node: dict = CONFIG):
    """A ConfigDict copy of `values` (a config, a section of one, or a dict) with every absent key
    of the schema section `node` that has a default filled in (not checked): for helpers that
    outside code calls with a partial section, e.g. `section(opt_cfg, sections.OPTIMIZER)`."""
    if isinstance(values, ml_collections.ConfigDict):
        out = values.copy_and_resolve_references()
    else:
        out = ml_collections.ConfigDict(dict(values))
    with out.unlocked():
        fill(node, out)
    return out


def check_overrides(argv: list[str]) -> None:
    """Checks the dotted paths of `--config.a.b=v` arguments against the schema (the parts inside
    an open map such as `model.policy.hf_config` are not checked). Raises ConfigError."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        parts = path.split(".")
        for i in range(len(parts)):
            node = lookup(CONFIG, ".".join(parts[:i + 1]))
            if isinstance(node, Key):
                if i + 1 < len(parts) and node.type.rstrip("?") != "map":
                    raise ConfigError(f"config.{'.'.join(parts[:i + 1])} is a {node.type} key, not a section")
                break


def lookup_key(path: str) -> Key | None:
    """The schema key at dotted `path` ("grm_rl.kl_coef"); None for a path inside an open map
    (e.g. "model.policy.hf_config.text_config.hidden_size"). ConfigError for an unknown path or a
    section."""
    parts = path.split(".")
    for i in range(len(parts)):
        node = lookup(CONFIG, ".".join(parts[:i + 1]))
        if isinstance(node, Key):
            if i + 1 == len(parts):
                return node
            if node.type.rstrip("?") == "map":
                return None
            raise ConfigError(f"config.{'.'.join(parts[:i + 1])} is a {node.type} key, not a section")
    raise ConfigError(f"config.{path} is a section, not a key: set its keys one by one")


def describe(section: str = "") -> str:
    """The listing of `section` (a dotted path such as "grm_rl" or "sft.policy"; "" = everything):
    one line per key with its type, default ("required": none) and meaning."""
    node = lookup(CONFIG, section) if section else CONFIG
    head = f"{'key':<34} {'type':<7} {'default':<16} meaning"
    return "\n".join([head] + describe_lines(node, section))


def is_placeholder(value) -> bool:
    """A string "<...>": a value the config file leaves to the command line (e.g. a checkpoint path)."""
    return isinstance(value, str) and len(value) > 2 and value.startswith("<") and value.endswith(">")


def placeholders(config, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every value of `config` that is still a placeholder (`is_placeholder`)."""
    found = []
    for key in config:
        value, full = config[key], f"{path}.{key}" if path else key
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            found += placeholders(value, full)
        elif is_placeholder(value):
            found.append((full, value))
    return found
