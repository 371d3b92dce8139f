"""The schema machinery: a `Key` (type, default, meaning, constraint) per config key, a `Section` of
keys and nested sections with its cross-key rules, and the walk that checks a config against them
and returns it frozen and typed (`build`).

Types are short names: "int", "float" (an int is fine), "bool", "str", "list" (list or tuple),
"map" (a dict whose keys the schema leaves open, e.g. an HF config); a trailing "?" allows None.
A constraint (`Check`) holds for every value that is not None: `at_least(1)`, `above(0)`,
`interval(0, 1, "()")`, `choices("a", "b")`, `registry("grlhfv_jax.rl.grpo.ADVANTAGE_ESTIMATORS")`
(the registry imported when a value is checked: config/ imports no module above it), `each(...)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

import ml_collections


class ConfigError(ValueError):
    """A config key is missing, unknown or has a bad value; the message names the key."""


class FrozenError(TypeError):
    """An assignment to a validated (frozen) config section."""


class _Required:
    def __repr__(self):
        return "required"


REQUIRED = _Required()  # the default of a key that has none: missing in a section a running stage reads -> error


# ----------------------------------------------------------------------------- constraints


class Check:
    """A constraint: `ok(value)` holds; `what` the value must be, in words (for errors and `describe`)."""

    def __init__(self, what: str, ok: Callable[[Any], bool]):
        self._what, self._ok = what, ok

    @property
    def what(self) -> str:
        return self._what

    def why(self, value) -> str:
        """What `value`, which fails the check, must be."""
        return self.what

    def ok(self, value) -> bool:
        try:
            return bool(self._ok(value))
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return self.what


class Registry(Check):
    """One of the names of the registry (a dict or tuple) at dotted path `where`, read when checked."""

    def __init__(self, where: str):
        self.where = where
        super().__init__(f"a name in {where}", lambda v: v in self.names())

    def names(self) -> list[str]:
        module, name = self.where.rsplit(".", 1)
        return sorted(getattr(importlib.import_module(module), name))

    @property
    def what(self) -> str:
        return f"one of {', '.join(map(repr, self.names()))} ({self.where})"

    def __str__(self) -> str:
        return f"in {self.where}"


def at_least(lo) -> Check:
    return Check(f">= {lo}", lambda v: v >= lo)


def above(lo) -> Check:
    return Check(f"> {lo}", lambda v: v > lo)


def interval(lo, hi, ends: str = "[]") -> Check:
    """lo .. hi, each end closed ("[", "]") or open ("(", ")")."""
    low = (lambda v: v >= lo) if ends[0] == "[" else (lambda v: v > lo)
    high = (lambda v: v <= hi) if ends[1] == "]" else (lambda v: v < hi)
    return Check(f"in {ends[0]}{lo}, {hi}{ends[1]}", lambda v: low(v) and high(v))


def choices(*values) -> Check:
    return Check(f"one of {', '.join(map(repr, values))}", lambda v: v in values)


def registry(where: str) -> Registry:
    return Registry(where)


class Each(Check):
    """A list whose every item meets `item` (`nonempty`: and at least one item)."""

    def __init__(self, item: Check, nonempty: bool):
        self.item = item
        super().__init__(
            f"a {'non-empty ' if nonempty else ''}list, each {item}",
            lambda v: (len(v) > 0 or not nonempty) and all(item.ok(x) for x in v),
        )

    def why(self, value) -> str:
        bad = [x for x in value if not self.item.ok(x)]
        return f"{self.what} ({bad[0]!r} is not)" if bad else self.what


def each(item: Check, *, nonempty: bool = False) -> Each:
    return Each(item, nonempty)


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its type, default (REQUIRED: none), meaning and constraint. `when`: a
    REQUIRED key is needed only when the sibling key when[0] has the value when[1]."""

    type: str
    default: Any
    meaning: str
    check: Check | None = None
    when: tuple[str, Any] | None = None


class Section(dict):
    """A section: name -> Key | Section, with its cross-key `rules` (each `rule(sec, path, config)`
    raises ConfigError naming a key; run on the frozen values of a section a running stage reads)
    and `filled` (an absent section is made of its defaults). Spreading one (`{**OPTIMIZER}`) copies
    its keys only."""

    def __init__(self, keys: Mapping = (), *, rules: tuple = (), filled: bool = False):
        super().__init__(keys)
        self.rules, self.filled = tuple(rules), filled


Node = Union[Key, dict]

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
        return isinstance(value, _MAPS + (Frozen,))
    raise ValueError(f"unknown schema type {kind!r}")


# ----------------------------------------------------------------------------- frozen values


def _plain(value):
    """A plain copy of a map's value: dicts for ConfigDicts / dicts, lists and tuples kept."""
    if isinstance(value, (ml_collections.ConfigDict, Frozen)):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class Frozen(Mapping):
    """A validated config section: read-only, its values of the schema's types (a float key holds a
    float, a list a tuple, an open map a plain dict, a section a Frozen). Attribute and item access
    (`cfg.grm_rl.kl_coef`, `cfg["grm_rl"]`), `in`, `.get`, iteration as a dict; assignment raises
    FrozenError. `replace(**changes)` is a changed copy."""

    __slots__ = ("_values", "_path")

    def __init__(self, values: dict, path: str = ""):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_path", path)

    def __getitem__(self, key):
        return self._values[key]

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config{'.' + self._path if self._path else ''} has no key '{key}'") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __setattr__(self, key, value):
        raise FrozenError(
            f"config{'.' + self._path if self._path else ''} is frozen (validated): cannot set '{key}'; use replace()"
        )

    __setitem__ = __setattr__

    def __delattr__(self, key):
        raise FrozenError(
            f"config{'.' + self._path if self._path else ''} is frozen (validated): cannot delete '{key}'"
        )

    __delitem__ = __delattr__

    def __repr__(self) -> str:
        return f"Frozen({self._values!r})"

    def __reduce__(self):
        return Frozen, (self._values, self._path)

    def to_dict(self) -> dict:
        """A plain, mutable nested dict of the values."""
        return {k: v.to_dict() if isinstance(v, Frozen) else _plain(v) for k, v in self._values.items()}

    def replace(self, **changes) -> Frozen:
        """A copy with `changes` (values or Frozen sections, taken as they are) set."""
        return Frozen({**self._values, **changes}, self._path)


# ----------------------------------------------------------------------------- the walk


def _dotted(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_key_error(path: str, key: str, section: dict) -> ConfigError:
    """`config.<path>.<key>: unknown key; did you mean '<nearest>'? (valid: ...)`"""
    valid = sorted(section)
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'? " if near else ""
    return ConfigError(f"config.{path + '.' if path else ''}{key}: unknown key; {hint}(valid: {', '.join(valid)})")


def bad_value(full: str, value, what: str) -> ConfigError:
    """`config.<full> = <value>: must be <what>`"""
    return ConfigError(f"config.{full} = {value!r}: must be {what}")


def value_of(spec: Key, value, full: str):
    """`value` checked against the key `spec` (type, constraint) and typed: a float for "float", a
    tuple for "list", a plain dict for "map"."""
    if not type_ok(spec.type, value):
        raise ConfigError(f"config.{full} = {value!r}: expected {spec.type}, got {type(value).__name__}")
    if value is None:
        return None
    kind = spec.type.rstrip("?")
    if kind == "float":
        value = float(value)
    elif kind == "list":
        value = _tuple(value)
    elif kind == "map":
        value = _plain(value)
    if spec.check is not None and not spec.check.ok(value):
        raise bad_value(full, value, spec.check.why(value))
    return value


def check(node: dict, value, path: str = "") -> None:
    """Raises ConfigError for the first unknown key, badly typed or out-of-range value in `value`
    (a config or a section of one) against the section `node`. Missing keys are not checked."""
    for key in value:
        if key not in node:
            raise unknown_key_error(path, key, node)
        spec, v, full = node[key], value[key], _dotted(path, key)
        if isinstance(spec, dict):
            if not isinstance(v, _MAPS + (Frozen,)):
                raise ConfigError(
                    f"config.{full} = {v!r}: expected a section (dict) with keys {', '.join(sorted(spec))}"
                )
            check(spec, v, full)
        else:
            value_of(spec, v, full)


def build(node: dict, value, path: str = "", used: Callable[[str], bool] = lambda path: True) -> Frozen:
    """`value` (a config or a section of one) as a Frozen section of `node`: checked (unknown keys,
    types, constraints), every absent key with a default filled in, absent `filled` sections made
    of their defaults. A REQUIRED key (whose `when` holds) missing from a section `used(path)` is an
    error; rules are not run (`run_rules`)."""
    check(node, value, path)
    out = {}
    for key, spec in node.items():
        full = _dotted(path, key)
        if isinstance(spec, dict):
            if key in value:
                out[key] = build(spec, value[key], full, used)
            elif getattr(spec, "filled", False):
                out[key] = build(spec, {}, full, used)
        elif key in value:
            out[key] = value_of(spec, value[key], full)
        elif spec.default is not REQUIRED:
            out[key] = value_of(spec, spec.default, full)
    if used(path):
        for key, spec in node.items():
            if not isinstance(spec, Key) or key in out:
                continue
            if spec.when is None or out.get(spec.when[0]) == spec.when[1]:
                need = f" (needed when {spec.when[0]} = {spec.when[1]!r})" if spec.when else ""
                raise ConfigError(f"config.{_dotted(path, key)} is missing: {spec.meaning}{need}")
    return Frozen(out, path)


def run_rules(node: dict, sec: Frozen, path: str, config: Frozen, used: Callable[[str], bool]) -> None:
    """Runs the rules of `node` on `sec` and of its subsections, in the sections `used(path)`."""
    if not used(path):
        return
    for rule in getattr(node, "rules", ()):
        rule(sec, path, config)
    for key, spec in node.items():
        if isinstance(spec, dict) and key in sec:
            run_rules(spec, sec[key], _dotted(path, key), config, used)


def fill(node: dict, value) -> None:
    """Adds every absent key of `value` that has a default, in place, in the sections it holds (for
    a mutable ConfigDict; `build` makes a frozen copy instead)."""
    for key, spec in node.items():
        if isinstance(spec, dict):
            if key in value:
                fill(spec, value[key])
        elif key not in value and spec.default is not REQUIRED:
            default = spec.default
            value[key] = dict(default) if isinstance(default, dict) else default


def lookup(node: dict, path: str) -> Node:
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
    """One line per key under `node`: dotted name, type, default, constraint, meaning."""
    if isinstance(node, Key):
        rule = f"[{node.check}] " if node.check is not None else ""
        when = f"[when {node.when[0]} = {node.when[1]!r}] " if node.when else ""
        return [f"{path:<34} {node.type:<7} {node.default!r:<16} {rule}{when}{node.meaning}"]
    lines = []
    for key, spec in node.items():
        lines += describe_lines(spec, _dotted(path, key))
    return lines
