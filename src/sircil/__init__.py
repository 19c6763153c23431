"""sircil: exemplar-based class-incremental learning with Self-Paced Imbalance Rectification."""

__version__ = "0.1.0"

# The registries that configs name (datasets, backbones, selections, methods, plug-ins) fill as
# their modules load; loading them here means a config is always read against all of them.
from . import methods, plugins  # noqa: E402,F401
