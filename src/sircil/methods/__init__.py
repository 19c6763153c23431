"""Methods by name. Each file registers one method class built on :class:`Method`."""

from __future__ import annotations

from typing import TypeVar

from ..config import METHOD_CONFIGS, UNUSED_BY_METHOD
from ..config_io import ConfigError
from ..training.phase import Step
from .base import Method

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Makes ``method.name: <cls.name>`` build ``cls`` and read its options as ``cls.Config``."""
    METHODS[cls.name] = cls
    METHOD_CONFIGS[cls.name] = cls.Config
    UNUSED_BY_METHOD[cls.name] = tuple(f"sir.{key}" for kind, key in SIR_HEAD_RULES.items() if kind != cls.head.kind)
    return cls


# SIR's options that act on one kind of head only
SIR_HEAD_RULES = {"cosine": "cosine_scale", "sigmoid": "sigmoid"}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"method.name must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]


from . import bic, dde, der, finetune, icarl, podnet, ssil, ucir, wa  # noqa: E402,F401  (registration side effect)

__all__ = ["METHODS", "Method", "Step", "method_class", "register_method"]
