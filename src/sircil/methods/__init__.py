"""Methods by name. Each file registers one method class built on :class:`Method`."""

from __future__ import annotations

from typing import TypeVar

from ..config import ConfigError, MethodConfig
from .base import Method, Step

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method.name must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


def method_config_class(name: str) -> type[MethodConfig]:
    return method_class(name).Config


from . import der, finetune, icarl, podnet, ucir  # noqa: E402,F401  (registration side effect)

__all__ = ["METHODS", "Method", "Step", "method_class", "method_config_class", "register_method"]
