"""The methods by name: each method module registers its class here when it is imported, and
``methods/__init__.py`` imports them all. A module of its own so that a method module imports
it rather than the package that imports that module."""

from __future__ import annotations

from typing import TypeVar

from ..config import METHOD_CONFIGS, UNUSED_BY_METHOD
from ..config_io import ConfigError
from .base import Method

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])

# SIR's options that act on one kind of head only
SIR_HEAD_RULES = {"cosine": "cosine_scale", "sigmoid": "sigmoid"}


def register_method(cls: M) -> M:
    """Makes ``method.name: <cls.name>`` build ``cls`` and read its options as ``cls.Config``."""
    METHODS[cls.name] = cls
    METHOD_CONFIGS[cls.name] = cls.Config
    UNUSED_BY_METHOD[cls.name] = tuple(f"sir.{key}" for kind, key in SIR_HEAD_RULES.items() if kind != cls.head.kind)
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method.name must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]
