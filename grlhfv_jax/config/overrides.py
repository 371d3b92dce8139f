"""Command-line overrides `--config.a.b=v`: their dotted paths checked against the schema before
anything is parsed, their values typed by the schema and set in the loaded config (a key the config
file leaves at its default, or a section it leaves out, is set too; ml_collections' own flags could
not)."""

from __future__ import annotations

import ast
import contextlib

import ml_collections

from grlhfv_jax.config.schema import ConfigError, Key, lookup
from grlhfv_jax.config.sections import CONFIG

PREFIX = "--config."


def _is_map(node) -> bool:
    return isinstance(node, Key) and node.type.rstrip("?") == "map"


def check_overrides(argv: list[str]) -> None:
    """Checks the dotted paths of `--config.a.b=v` arguments against the schema (the parts inside
    an open map such as `model.policy.hf_config` are not checked). Raises ConfigError."""
    for arg in argv:
        if not arg.startswith(PREFIX):
            continue
        parts = arg[len(PREFIX) :].split("=", 1)[0].split(".")
        for i in range(len(parts)):
            node = lookup(CONFIG, ".".join(parts[: i + 1]))
            if isinstance(node, Key):
                if i + 1 < len(parts) and not _is_map(node):
                    raise ConfigError(f"config.{'.'.join(parts[: i + 1])} is a {node.type} key, not a section")
                break


def lookup_key(path: str) -> Key | None:
    """The schema key at dotted `path` ("grm_rl.kl_coef"); None for a path inside an open map
    (e.g. "model.policy.hf_config.text_config.hidden_size"). ConfigError for an unknown path or a
    section."""
    parts = path.split(".")
    for i in range(len(parts)):
        node = lookup(CONFIG, ".".join(parts[: i + 1]))
        if isinstance(node, Key):
            if i + 1 == len(parts):
                return node
            if _is_map(node):
                return None
            raise ConfigError(f"config.{'.'.join(parts[: i + 1])} is a {node.type} key, not a section")
    raise ConfigError(f"config.{path} is a section, not a key: set its keys one by one")


def parse_value(text: str, kind: str):
    """A command-line value as the schema type `kind` ("int", "float?", "list", ...; "literal": a
    new key in an open map, a Python literal, else the text itself)."""
    if kind.endswith("?"):
        if text in ("None", "none", "null"):
            return None
        kind = kind[:-1]
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    if kind in ("int", "float"):
        return int(text) if kind == "int" else float(text)
    if kind == "literal":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if kind in ("list", "map"):
        value = ast.literal_eval(text)
        if not isinstance(value, (list, tuple, dict)):
            raise ValueError(f"expected a {kind} literal, got {text!r}")
        return value
    return text


def _is_section(where: str) -> bool:
    """Whether dotted `where` is a section of the schema (not a key, not inside an open map)."""
    node = CONFIG
    for part in where.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict)


def _unlocked(node):
    return node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext()


def apply_overrides(config, overrides: list[str]) -> None:
    """Sets each `--config.a.b=v` of `overrides` in `config` (a loaded ConfigDict, in place), typed
    by the schema; a section of the schema the file leaves out (e.g. `policy_rl.judge`) is created.
    ConfigError names a bad path or value."""
    for arg in overrides:
        path, text = arg[len(PREFIX) :].split("=", 1)
        *parents, leaf = path.split(".")
        node = config
        for i, part in enumerate(parents):
            where = ".".join(parents[: i + 1])
            if part not in node:
                if not _is_section(where):  # inside an open map: not made up
                    raise ConfigError(f"config.{where}: not in the config file")
                with _unlocked(node):
                    node[part] = ml_collections.ConfigDict()
            node = node[part]
        spec = lookup_key(path)
        if spec is not None:
            kind = spec.type
        else:  # inside an open map (an HF config): the type of the value it replaces
            old = node[leaf] if leaf in node else None
            kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(old), "literal")
        try:
            value = parse_value(text, kind)
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"config.{path} = {text!r}: {e}") from None
        with _unlocked(node):
            node[leaf] = value
