"""Typed run configuration: YAML files plus ``--set key=value`` overrides.

``Config`` gathers the sections of config_sections.py, the method's options and the section of
every registered training plug-in; config_io.py reads the files and overrides. Every field is
validated before any data is loaded or any model is built, and an error always names the
offending key, so a typo never costs a training run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import yaml

from .config_io import ConfigError, apply_overrides, build_dataclass, read_yaml
from .config_sections import DataConfig, LogConfig, MemoryConfig, ModelConfig, PluginConfig, ScenarioConfig, TrainConfig


@dataclass
class MethodConfig:
    """Base of every method's options; each method subclasses it with its own fields."""

    name: str = "icarl"

    def validate(self, cfg: Config) -> None:
        """Range checks of the method's own options; ``cfg`` is the whole configuration."""


@dataclass
class Config:
    """The run's sections; a plug-in's section (``cfg.sir``) is an attribute named by the plug-in
    registry (``PLUGIN_CONFIGS``), not a field, so that a plug-in needs no edit of this class."""

    seed: int = 1993
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cache_dir: str | None = None

    def __getattr__(self, name: str) -> Any:
        # only reached for what is not set: a plug-in section the config did not name is at its defaults
        if name not in PLUGIN_CONFIGS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        section = PLUGIN_CONFIGS[name]()
        setattr(self, name, section)
        return section

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def plugin_sections(self) -> dict[str, PluginConfig]:
        """Every registered plug-in's section, in registration order."""
        return {section: getattr(self, section) for section in PLUGIN_CONFIGS}

    def to_dict(self) -> dict[str, Any]:
        """Every section; the plug-ins' after ``train``, where the files have always had ``sir``."""
        core = dataclasses.asdict(self)
        plugins = {section: dataclasses.asdict(options) for section, options in self.plugin_sections().items()}
        keys = list(core)
        at = keys.index("train") + 1
        return {**{k: core[k] for k in keys[:at]}, **plugins, **{k: core[k] for k in keys[at:]}}

    def hash(self) -> str:
        """Stable digest of what determines a run's results, for run folders and resume checks.

        Only fields that differ from their defaults count (the method's name always does), so
        a later sircil that adds an option, defaulting to the old behaviour, still recognizes
        and resumes earlier runs. Where the base-step cache lives, what is logged, how many CPU threads run
        how often a step checkpoints and whether the step is compiled are left out: none changes
        the recipe (compiling changes float rounding only), and a run may resume with any of
        them changed."""
        content = non_default(self, FIRST_DEFAULTS)
        content.pop("cache_dir", None)
        content.pop("log", None)
        for section, options in self.plugin_sections().items():  # a plug-in that is off is not built: its options change nothing
            if options.enabled:
                content[section] = non_default(options, FIRST_DEFAULTS, f"{section}.")
        for dotted in UNUSED_BY_METHOD.get(self.method.name, ()):  # e.g. SIR's cosine-head rule on a linear head
            section, key = dotted.split(".")
            content.get(section, {}).pop(key, None)
            if section in content and not content[section]:
                content.pop(section)
        for key in ("threads", "checkpoint_every", "compile"):
            content.get("train", {}).pop(key, None)
        _hash_milestones_as_epochs(content.get("train", {}), self.train)
        content.setdefault("method", {})["name"] = self.method.name
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def milestone_epochs(stones: list[int | float], epochs: int) -> list[int | float]:
    """Milestones as epoch indices: fractions (below 1) of ``epochs`` rounded to the nearest epoch."""
    return [round(m * epochs) if m < 1 else m for m in stones]


def _hash_milestones_as_epochs(content: dict[str, Any], train: TrainConfig) -> None:
    """Milestones given as fractions hash as the epochs they stand for, so [0.7, 0.9] of 20 epochs
    and [14, 18] are one recipe (and runs recorded with the latter keep their hashes)."""
    if "milestones" in content:
        content["milestones"] = milestone_epochs(train.milestones, train.epochs)
    if "base_milestones" in content:  # not at its default, null
        content["base_milestones"] = milestone_epochs(content["base_milestones"], train.base_epochs or train.epochs)
    elif any(m < 1 for m in train.milestones) and train.base_epochs not in (None, train.epochs):
        content["base_milestones"] = milestone_epochs(train.milestones, train.base_epochs)


# Defaults changed after runs were hashed, with the default they had then. A run's hash compares
# these fields with their first default, so finished runs keep their hashes (and are recognized
# by sweeps and resumes) and a config hashes by what it means, not by what the default was.
FIRST_DEFAULTS: dict[str, Any] = {
    "sir.sigmoid": "margin",  # -> "weight": the three-seed grid (docs/sir.md)
    # PODNet -> the official code's cancelling margin and unbounded scale (docs/methods.md); the
    # archived runs' config.yaml files say margin_on: target, which they ran with
    "method.margin_on": "target",
    "method.min_scale": 1.0,
    # SS-IL -> the official lr / (t + 1) per task; the archived runs' config.yaml files say false
    "method.divide_lr_by_task": False,
    # BiC -> the official validation pool held out from the start; the archived runs say split
    "method.validation": "split",
}


def non_default(obj: Any, first: dict[str, Any] | None = None, prefix: str = "") -> dict[str, Any]:
    """The fields of a config dataclass (recursively) whose values differ from the defaults
    (from ``first[dotted.name]`` where it names one)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested = non_default(value, first, f"{prefix}{f.name}.")
            if nested:
                out[f.name] = nested
            continue
        if first and prefix + f.name in first:
            default = first[prefix + f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            out[f.name] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    raw = read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return config_from_dict(raw)


# String options whose values include YAML's boolean words: ``compile: off`` must mean "off".
BOOLEAN_WORDS = {"train.compile": {False: "off", True: "default"}}


# method name -> its options' class, filled by the method registry (methods/__init__.py)
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {}
# method name -> options of other sections that cannot act on it (a head rule for another kind
# of head), left out of its runs' hashes; filled by the method registry
UNUSED_BY_METHOD: dict[str, tuple[str, ...]] = {}
# config section -> options class of a training plug-in, filled by the plug-in registry
# (plugins.register_plugin); each section is switched by its ``enabled``
PLUGIN_CONFIGS: dict[str, type[PluginConfig]] = {}


def register_plugin_section(section: str, options: type[PluginConfig]) -> None:
    """Makes ``section:`` of a config read, validate and hash as ``options``."""
    if section in {f.name for f in dataclasses.fields(Config)}:
        raise ValueError(f"a plug-in section may not be named {section!r}: Config has a field of that name")
    PLUGIN_CONFIGS[section] = options


def method_config_class(name: str) -> type[MethodConfig]:
    if name not in METHOD_CONFIGS:
        raise ConfigError(f"method.name must be one of {sorted(METHOD_CONFIGS)}, got {name!r}")
    return METHOD_CONFIGS[name]


def config_from_dict(raw: dict[str, Any]) -> Config:
    raw = dict(raw)
    method_raw = raw.pop("method", None) or {}
    if not isinstance(method_raw, dict):
        raise ConfigError("method must be a section with at least 'name'")
    name = method_raw.get("name", MethodConfig.name)
    method_cls = method_config_class(name)
    cfg = build_dataclass(Config, raw, "", BOOLEAN_WORDS, skip={"method", *PLUGIN_CONFIGS})
    cfg.method = build_dataclass(method_cls, method_raw, "method.", BOOLEAN_WORDS)
    for section, options in PLUGIN_CONFIGS.items():
        given = raw.get(section)
        setattr(cfg, section, build_dataclass(options, {} if given is None else given, f"{section}.", BOOLEAN_WORDS))
    validate(cfg)
    return cfg


# Checks that need a layer above this module (the dataset's class count, the backbone and selection
# registries): each layer registers its own, so the configuration imports no layer above it.
CHECKS: list[Callable[[Config], None]] = []


def register_check(check: Callable[[Config], None]) -> Callable[[Config], None]:
    CHECKS.append(check)
    return check


class SelfChecking(Protocol):
    """A section that checks its own options (every section but the method's, which needs the whole config)."""

    def validate(self) -> None: ...


def validate(cfg: Config) -> None:
    """Range and consistency checks before any data is loaded: each section's own (every plug-in's
    included), then the registered checks (a user's dataset is probed: its class folders or its
    arrays' headers give the class count and image shape), then the method's."""
    sections: tuple[SelfChecking, ...] = (cfg.data, cfg.scenario, cfg.memory, cfg.model, cfg.train, *cfg.plugin_sections().values(), cfg.log)
    for section in sections:
        section.validate()
    for check in CHECKS:
        check(cfg)
    cfg.method.validate(cfg)
