"""sircil's version: the one place it is written (pyproject.toml reads it from here).

A module of its own, so that the run folder and the base-step cache can record it without
importing the package, whose ``__init__`` loads every method and plug-in."""

__version__ = "0.1.0"
