"""sircil: exemplar-based class-incremental learning with Self-Paced Imbalance Rectification."""

from .version import __version__  # noqa: F401  (sircil.__version__)

# The registries that configs name (datasets, backbones, selections, methods, plug-ins) fill as
# their modules load; loading them here means a config is always read against all of them.
from . import methods, plugins  # noqa: F401


def __getattr__(name: str):
    """``sircil.run``, ``sircil.load_run``, ``sircil.evaluate_run``, ``sircil.export_run``: the Python
    API (src/sircil/inference.py), imported on first use."""
    if name in ("run", "load_run", "evaluate_run", "export_run"):
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'sircil' has no attribute {name!r}")
