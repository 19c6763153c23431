"""The generic half of reading a configuration: YAML files (+ ``extends``), ``--set key=value``
overrides and typed dataclasses built from the raw mapping, with errors that name the key.

It knows no configuration class of sircil: config.py builds its own with ``build_dataclass``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

# dotted key of a string option -> its values for YAML's boolean words (a bare ``off`` reads as false)
BooleanWords = Mapping[str, Mapping[bool, str]]


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (``key.sub``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. memory.per_class=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml_mapping(path: Path, kind: str, hint: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ``kind`` and ``hint`` word the errors."""
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist; {hint}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping of keys, got {type(raw).__name__}")
    return raw


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; ``extends: other.yaml`` (relative to the file) layers it on another."""
    if path.resolve() in chain:
        raise ConfigError(f"config file {path} extends itself through {' -> '.join(map(str, chain))}")
    raw = read_yaml_mapping(path, "config file", "pass a YAML file from configs/")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return deep_merge(read_yaml(path.parent / parent, chain + (path.resolve(),)), raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_dataclass(cls: type, raw: Any, prefix: str, words: BooleanWords, skip: frozenset[str] | set[str] = frozenset()) -> Any:
    """``cls`` from the mapping ``raw``, each value checked against its field's type; ``prefix``
    (``method.``) makes the keys in errors dotted names of the whole configuration. Keys in
    ``skip`` are known but left to the caller (a field built apart, or a section that is no field)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    known = [*fields, *sorted(set(skip) - set(fields))]
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f"; did you mean {prefix}{hint[0]}?" if hint else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown key {prefix}{key}{extra}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        if name in skip:
            continue
        values[name] = _coerce(hints[name], value, prefix + name, words)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str, words: BooleanWords) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value if value is not None else {}, key + ".", words)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(tp, value, key, words)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {_type_name(item)}, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]", words) for i, v in enumerate(value)]
    return _coerce_scalar(tp, value, key, words)


def _coerce_union(tp: Any, value: Any, key: str, words: BooleanWords) -> Any:
    options = typing.get_args(tp)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key} may not be null")
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(option, value, key, words)
        except ConfigError:
            continue
    raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")


def _coerce_scalar(tp: Any, value: Any, key: str, words: BooleanWords) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and key in words:  # YAML 1.1 reads a bare off / on as false / true
            return words[key][value]
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))
