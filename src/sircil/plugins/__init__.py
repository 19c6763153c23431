"""Training plug-ins by config section: SIR and its peers among the logit rectifications."""

from .base import PLUGINS, TrainPlugin, build_plugins, register_plugin
from . import logit_adjustment, sir  # noqa: E402,F401  (registration side effect)

__all__ = ["PLUGINS", "TrainPlugin", "build_plugins", "register_plugin"]
