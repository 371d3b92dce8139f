"""The schema machinery: a `Key` (type, default, meaning) per config key, a section is a dict of
keys and nested sections, and the checks, default filling and listing that walk them.

Types are short names: "int", "float" (an int is fine), "bool", "str", "list" (list or tuple),
"map" (a dict whose keys the schema leaves open, e.g. an HF config); a trailing "?" allows None.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Union

import ml_collections


class ConfigError(ValueError):
    """A config key is missing, unknown or has a bad value; the message names the key."""


class _Required:
    def __repr__(self):
        return "required"


REQUIRED = _Required()  # the default of a key that has none: the stage's validator says it is missing


@dataclasses.dataclass(frozen=True)
class Key:
    type: str
    default: Any
    meaning: str


Section = dict  # name -> Key | Section
Node = Union[Key, Section]

_MAPS = (dict, ml_collections.ConfigDict)


def type_ok(kind: str, value) -> bool:
    """Whether `value` is of the schema type `kind`."""
    if kind.endswith("?"):
        return value is None or type_ok(kind[:-1], value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "map":
        return isinstance(value, _MAPS)
    raise ValueError(f"unknown schema type {kind!r}")


def unknown_key_error(path: str, key: str, section: Section) -> ConfigError:
    """`config.<path>.<key>: unknown key; did you mean '<nearest>'? (valid: ...)`"""
    valid = sorted(section)
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return ConfigError(f"config.{path + '.' if path else ''}{key}: unknown key; {hint}(valid: {', '.join(valid)})")


def check(node: Section, value, path: str = "") -> None:
    """Raises ConfigError for the first unknown key or badly typed value in `value` (a config or a
    section of one) against the section `node`. Missing keys are left to the stages' validators."""
    for key in value:
        if key not in node:
            raise unknown_key_error(path, key, node)
        spec, v, full = node[key], value[key], f"{path}.{key}" if path else key
        if isinstance(spec, dict):
            if not isinstance(v, _MAPS):
                raise ConfigError(f"config.{full} = {v!r}: expected a section (dict) with keys {', '.join(sorted(spec))}")
            check(spec, v, full)
        elif not type_ok(spec.type, v):
            raise ConfigError(f"config.{full} = {v!r}: expected {spec.type}, got {type(v).__name__}")


def fill(node: Section, value) -> None:
    """Adds every absent key of `value` that has a default, in place, in the sections it holds."""
    for key, spec in node.items():
        if isinstance(spec, dict):
            if key in value:
                fill(spec, value[key])
        elif key not in value and spec.default is not REQUIRED:
            default = spec.default
            value[key] = dict(default) if isinstance(default, dict) else default


def lookup(node: Section, path: str) -> Node:
    """The key or section at dotted `path` (e.g. "sft.policy"); ConfigError names an unknown part."""
    done = []
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            if isinstance(node, dict):
                raise unknown_key_error(".".join(done), part, node)
            raise ConfigError(f"config.{'.'.join(done)} is a {node.type} key, not a section")
        node, done = node[part], done + [part]
    return node


def describe_lines(node: Node, path: str = "") -> list[str]:
    """One line per key under `node`: dotted name, type, default, meaning."""
    if isinstance(node, Key):
        return [f"{path:<34} {node.type:<7} {node.default!r:<16} {node.meaning}"]
    lines = []
    for key, spec in node.items():
        lines += describe_lines(spec, f"{path}.{key}" if path else key)
    return lines
