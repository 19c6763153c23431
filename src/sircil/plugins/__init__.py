"""Training plug-ins by config section: SIR and its peers among the logit rectifications.

Every module of this package registers its plug-in when it is imported, and all of them are
imported here, so a plug-in is its one file."""

import importlib
import pkgutil

from .base import PLUGINS, TrainPlugin, build_plugins, register_plugin

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PLUGINS", "TrainPlugin", "build_plugins", "register_plugin"]
