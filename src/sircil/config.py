"""Typed run configuration: YAML files plus ``--set key=value`` overrides.

Every field is validated before any data is loaded or any model is built, and an
error always names the offending key, so a typo never costs a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    root: str | None = None
    train_per_class: int | None = None
    test_per_class: int | None = None
    class_order: list[int] | str | None = None
    order_seed: int | None = 1993
    normalize: str = "mean_std"
    mean: list[float] | None = None
    std: list[float] | None = None
    pad: int = 4
    flip: bool | None = None
    brightness: float = 0.0
    download: bool = False
    image_size: int | None = None  # image folders: images resized (shorter side) and center-cropped to this
    crop: str = "pad"  # "pad": pad + random crop (CIFAR); "resized": random resized crop to crop_size (ImageNet)
    crop_size: int | None = None  # "resized": training crop and evaluation center crop (e.g. 224 of 256)
    subset: str | None = None  # imagenet_subset: "ucir" (default) or "podnet"

    NORMALIZATIONS: ClassVar[tuple[str, ...]] = ("mean_std", "pixel_mean")

    def validate(self) -> None:
        """Checks of this section alone; those against the dataset itself are data/datasets.py's."""
        require(self.image_size is None or self.image_size >= 8, f"data.image_size must be >= 8 or null, got {self.image_size}")
        require(self.crop in ("pad", "resized"), f"data.crop must be 'pad' or 'resized', got {self.crop!r}")
        require(
            (self.crop == "resized") == (self.crop_size is not None),
            f"data.crop_size goes with data.crop=resized (and only then); got crop={self.crop!r}, crop_size={self.crop_size}",
        )
        require(
            self.subset is None or self.dataset == "imagenet_subset",
            f"data.subset names an ImageNet subset and goes with data.dataset=imagenet_subset, not {self.dataset!r}",
        )
        for key in ("train_per_class", "test_per_class"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"data.{key} must be >= 1 or null, got {value}")
        require(self.normalize in self.NORMALIZATIONS, f"data.normalize must be one of {self.NORMALIZATIONS}, got {self.normalize!r}")
        require(self.pad >= 0, f"data.pad must be >= 0, got {self.pad}")
        require(self.std is None or all(v > 0 for v in self.std), f"data.std must be > 0, got {self.std}")
        require(0.0 <= self.brightness <= 1.0, f"data.brightness must be in [0, 1], got {self.brightness}")


@dataclass
class ScenarioConfig:
    base_classes: int = 2
    steps: int = 4

    def validate(self) -> None:
        require(self.base_classes >= 0, f"scenario.base_classes must be >= 0, got {self.base_classes}")
        require(self.steps >= 1, f"scenario.steps must be >= 1, got {self.steps}")


@dataclass
class MemoryConfig:
    per_class: int | None = 20
    total: int | None = None
    selection: str = "herding"

    def validate(self) -> None:
        require(
            (self.per_class is None) != (self.total is None),
            "set exactly one of memory.per_class and memory.total (the other to null, "
            f"e.g. --set memory.per_class=null); got per_class={self.per_class}, total={self.total}",
        )
        require(self.per_class is None or self.per_class >= 0, f"memory.per_class must be >= 0, got {self.per_class}")
        require(self.total is None or self.total >= 0, f"memory.total must be >= 0, got {self.total}")


@dataclass
class ModelConfig:
    backbone: str = "resnet32"
    last_relu: bool = True
    block_relu: bool = True
    shortcut: str = "A"
    zero_init_residual: bool = False

    def validate(self) -> None:
        require(self.shortcut in ("A", "B"), f"model.shortcut must be 'A' (zero padding) or 'B' (1x1 conv), got {self.shortcut!r}")


@dataclass
class TrainConfig:
    epochs: int = 30
    base_epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    base_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    base_weight_decay: float | None = None  # the base step's own, where a recipe has one (WA)
    scheduler: str = "cosine"
    # epochs after which the lr drops; numbers below 1 are fractions of the phase's epochs
    # ([0.7, 0.9]), so --set train.epochs=5 needs no new milestones
    milestones: list[int | float] = field(default_factory=list)
    base_milestones: list[int | float] | None = None
    lr_decay: float = 0.1
    grad_clip_value: float | None = None
    device: str = "auto"
    eval_batch_size: int = 256
    channels_last: bool = True
    threads: int | None = None
    checkpoint_every: int = 10  # epochs of a step's main phase between mid-step checkpoints (0: only after each step)
    precision: str = "fp32"  # "bf16": forward passes and losses under bfloat16 autocast (weights, optimizer stay fp32)
    # torch.compile of the training step: "off", "default", "reduce-overhead" (CUDA graphs), or
    # "auto": reduce-overhead on one CUDA device, off elsewhere (CPU: compiling gains little; DDP: opt-in).
    compile: str = "auto"

    SCHEDULERS: ClassVar[tuple[str, ...]] = ("cosine", "step", "constant")
    DEVICES: ClassVar[tuple[str, ...]] = ("auto", "cpu", "cuda", "mps")
    COMPILE_MODES: ClassVar[tuple[str, ...]] = ("auto", "off", "default", "reduce-overhead")

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            require(value >= 1, f"train.{name} must be >= 1, got {value}")
        require(self.base_epochs is None or self.base_epochs >= 1, f"train.base_epochs must be >= 1 or null, got {self.base_epochs}")
        require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        require(self.base_lr is None or self.base_lr > 0, f"train.base_lr must be > 0 or null, got {self.base_lr}")
        require(0 <= self.momentum < 1, f"train.momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.base_weight_decay is None or self.base_weight_decay >= 0, f"train.base_weight_decay must be >= 0 or null, got {self.base_weight_decay}")
        require(0 < self.lr_decay <= 1, f"train.lr_decay must be in (0, 1], got {self.lr_decay}")
        require(self.scheduler in self.SCHEDULERS, f"train.scheduler must be one of {self.SCHEDULERS}, got {self.scheduler!r}")
        require(
            self.device.split(":")[0] in self.DEVICES, f"train.device must be one of {self.DEVICES} (cuda:N allowed), got {self.device!r}"
        )
        require(self.grad_clip_value is None or self.grad_clip_value > 0, f"train.grad_clip_value must be > 0 or null, got {self.grad_clip_value}")
        require(self.threads is None or self.threads >= 1, f"train.threads must be >= 1 or null, got {self.threads}")
        require(self.precision in ("fp32", "bf16"), f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")
        require(self.compile in self.COMPILE_MODES, f"train.compile must be one of {self.COMPILE_MODES}, got {self.compile!r}")
        require(self.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0 (0: only after each step), got {self.checkpoint_every}")
        for key, stones, epochs in (
            ("train.milestones", self.milestones, self.epochs),
            ("train.base_milestones", self.base_milestones or [], self.base_epochs or self.epochs),
        ):
            fractions = all(0 < e < 1 for e in stones)
            require(
                fractions or all(isinstance(e, int) and 0 < e < epochs for e in stones),
                f"{key} must be epochs strictly between 0 and the epoch count {epochs}, or all fractions of it in (0, 1) "
                f"(e.g. [0.7, 0.9]), got {stones}",
            )
            require(list(stones) == sorted(set(stones)), f"{key} must be increasing, got {stones}")


@dataclass
class LogConfig:
    """What a run writes beside log.txt and metrics.json (every epoch is in metrics.jsonl)."""

    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard (needs the tensorboard package)

    def validate(self) -> None:
        require(
            not self.tensorboard or importlib.util.find_spec("tensorboard") is not None,
            "log.tensorboard: true needs the tensorboard package (.venv/bin/pip install tensorboard), or set log.tensorboard: false",
        )


@dataclass
class SIRConfig:
    """SIR plug-in (sir.py): each part has its own switch, so ablations are a --set away."""

    enabled: bool = False
    # ``enabled: true`` alone is the whole method (FC + CA + IT at the values of the paper configs);
    # ablations switch parts off.
    fc: float = 1.0  # tau; 0 switches frequency compensation off
    ca: float = 0.9  # gamma; 1 switches chronological attenuation off
    it: float = 0.5  # lambda, in the method's logit units before any scale; 0 switches IT off
    # Scaled-cosine heads (UCIR, PODNet): null gives FC's offsets in logit units, added after the
    # learned scale; a number s_ref gives them in similarity units, tau * w_k * b_k / s_ref, moving
    # with the learned scale like IT's margins (docs/sir.md: which one and why).
    cosine_scale: float | None = 16.0
    # Sigmoid heads (iCaRL): "weight" turns FC's offsets into per-sample weights of the BCE,
    # exp(-tau * w_y * b_y), normalized to mean 1 over the batch; "margin" adds them to the logits
    # (over a whole run it stops iCaRL learning new classes: docs/sir.md).
    sigmoid: str = "weight"

    def validate(self) -> None:
        require(self.fc >= 0, f"sir.fc (tau) must be >= 0, got {self.fc}")
        require(0 < self.ca <= 1, f"sir.ca (gamma) must be in (0, 1], got {self.ca}")
        require(self.it >= 0, f"sir.it (lambda) must be >= 0, got {self.it}")
        require(self.cosine_scale is None or self.cosine_scale > 0, f"sir.cosine_scale must be > 0 or null, got {self.cosine_scale}")
        require(self.sigmoid in ("margin", "weight"), f"sir.sigmoid must be 'margin' or 'weight', got {self.sigmoid!r}")


@dataclass
class LogitAdjustmentConfig:
    """Logit adjustment (Menon et al., ICLR 2021) as a plug-in (plugins/logit_adjustment.py): the
    prior correction from the step's class counts alone, SIR's frequency compensation without
    its attenuation, transfer or per-head rules."""

    enabled: bool = False
    tau: float = 1.0
    # "loss": the logit-adjusted loss (training logits + tau log prior; tau 1 is the balanced
    # softmax); "post_hoc": train as usual, subtract tau log prior from the logits at inference.
    mode: str = "loss"

    MODES: ClassVar[tuple[str, ...]] = ("loss", "post_hoc")

    def validate(self) -> None:
        require(self.tau >= 0, f"logit_adjustment.tau must be >= 0, got {self.tau}")
        require(self.mode in self.MODES, f"logit_adjustment.mode must be one of {self.MODES}, got {self.mode!r}")


@dataclass
class MethodConfig:
    """Base of every method's options; each method subclasses it with its own fields."""

    name: str = "icarl"

    def validate(self, cfg: Config) -> None:
        """Range checks of the method's own options; ``cfg`` is the whole configuration."""


@dataclass
class Config:
    seed: int = 1993
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sir: SIRConfig = field(default_factory=SIRConfig)
    logit_adjustment: LogitAdjustmentConfig = field(default_factory=LogitAdjustmentConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        for section in PLUGIN_SECTIONS:  # a plug-in that is off is not built: its options change nothing
            if not getattr(self, section).enabled:
                content.pop(section, None)
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
    if "base_milestones" in content:
        content["base_milestones"] = milestone_epochs(train.base_milestones, train.base_epochs or train.epochs)
    elif any(m < 1 for m in train.milestones) and train.base_epochs not in (None, train.epochs):
        content["base_milestones"] = milestone_epochs(train.milestones, train.base_epochs)


# Defaults changed after runs were hashed, with the default they had then. A run's hash compares
# these fields with their first default, so finished runs keep their hashes (and are recognized
# by sweeps and resumes) and a config hashes by what it means, not by what the default was.
FIRST_DEFAULTS: dict[str, Any] = {
    "sir.sigmoid": "margin",  # -> "weight": the three-seed grid (docs/sir.md)
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


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (``key.sub``, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. memory.per_class=5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml_mapping(path: Path, kind: str, hint: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ``kind`` and ``hint`` word the errors."""
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist; {hint}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping of keys, got {type(raw).__name__}")
    return raw


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict; ``extends: other.yaml`` (relative to the file) layers it on another."""
    if path.resolve() in chain:
        raise ConfigError(f"config file {path} extends itself through {' -> '.join(map(str, chain))}")
    raw = read_yaml_mapping(path, "config file", "pass a YAML file from configs/")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return deep_merge(read_yaml(path.parent / parent, chain + (path.resolve(),)), raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
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
# sections of training plug-ins, each switched by its ``enabled``
PLUGIN_SECTIONS = ("sir", "logit_adjustment")


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
    cfg = _build(Config, raw, "", skip={"method"})
    cfg.method = _build(method_cls, method_raw, "method.")
    validate(cfg)
    return cfg


def _build(cls: type, raw: Any, prefix: str, skip: frozenset[str] | set[str] = frozenset()) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            extra = f"; did you mean {prefix}{hint[0]}?" if hint else f"; known keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown key {prefix}{key}{extra}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        if name in skip:
            continue
        values[name] = _coerce(hints[name], value, prefix + name)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{key} may not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {_type_name(tp)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {_type_name(item)}, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and key in BOOLEAN_WORDS:  # YAML 1.1 reads a bare off / on as false / true
            return BOOLEAN_WORDS[key][value]
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


# Checks that need a layer above this module (the dataset's class count, the backbone and selection
# registries): each layer registers its own, so this module imports nothing of sircil.
CHECKS: list[Callable[[Config], None]] = []


def register_check(check: Callable[[Config], None]) -> Callable[[Config], None]:
    CHECKS.append(check)
    return check


def validate(cfg: Config) -> None:
    """Range and consistency checks before any data is loaded: each section's own, then the
    registered checks (a user's dataset is probed: its class folders or its arrays' headers
    give the class count and image shape), then the method's."""
    for section in (cfg.data, cfg.scenario, cfg.memory, cfg.model, cfg.train, cfg.sir, cfg.logit_adjustment, cfg.log):
        section.validate()
    for check in CHECKS:
        check(cfg)
    cfg.method.validate(cfg)
