"""Methods by name. Each file registers one method class built on :class:`Method`."""

from __future__ import annotations

from ..training.phase import Step
from .base import Method
from .registry import METHODS, method_class, register_method
from . import bic, dde, der, finetune, icarl, podnet, ssil, ucir, wa  # noqa: F401  (each registers its method)

__all__ = ["METHODS", "Method", "Step", "method_class", "register_method"]
