"""Typed run configuration: YAML files plus ``--set key=value`` overrides.

Every field is validated before any data is loaded or any model is built, and an
error always names the offending key, so a typo never costs a training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


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


@dataclass
class ScenarioConfig:
    base_classes: int = 2
    steps: int = 4


@dataclass
class MemoryConfig:
    per_class: int | None = 20
    total: int | None = None
    selection: str = "herding"


@dataclass
class ModelConfig:
    backbone: str = "resnet32"
    last_relu: bool = True
    block_relu: bool = True
    shortcut: str = "A"
    zero_init_residual: bool = False


@dataclass
class TrainConfig:
    epochs: int = 30
    base_epochs: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    base_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    base_milestones: list[int] | None = None
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
    # Sigmoid heads (iCaRL): "margin" adds FC's offsets to the logits; "weight" turns them into
    # per-sample weights of the BCE, exp(-tau * w_y * b_y), normalized to mean 1 over the batch.
    sigmoid: str = "margin"


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
    cache_dir: str | None = None

    SCHEDULERS: ClassVar[tuple[str, ...]] = ("cosine", "step", "constant")
    NORMALIZATIONS: ClassVar[tuple[str, ...]] = ("mean_std", "pixel_mean")
    DEVICES: ClassVar[tuple[str, ...]] = ("auto", "cpu", "cuda", "mps")
    COMPILE_MODES: ClassVar[tuple[str, ...]] = ("auto", "off", "default", "reduce-overhead")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable digest of what determines a run's results, for run folders and resume checks.

        Only fields that differ from their defaults count (the method's name always does), so
        a later sircil that adds an option, defaulting to the old behaviour, still recognizes
        and resumes earlier runs. Where the base-step cache lives, how many CPU threads run
        how often a step checkpoints and whether the step is compiled are left out: none changes
        the recipe (compiling changes float rounding only), and a run may resume with any of
        them changed."""
        content = non_default(self)
        content.pop("cache_dir", None)
        for key in ("threads", "checkpoint_every", "compile"):
            content.get("train", {}).pop(key, None)
        content.setdefault("method", {})["name"] = self.method.name
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def non_default(obj: Any) -> dict[str, Any]:
    """The fields of a config dataclass (recursively) whose values differ from the defaults."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested = non_default(value)
            if nested:
                out[f.name] = nested
            continue
        if f.default is not dataclasses.MISSING:
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


def config_from_dict(raw: dict[str, Any]) -> Config:
    from .methods import method_config_class

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


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Range and consistency checks before any data is loaded (a user's dataset is probed:
    its class folders or its arrays' headers give the class count and image shape)."""
    from .data.datasets import resolve_spec
    from .data.memory import SELECTIONS
    from .models import BACKBONES, RESNET18_FIXED

    d, s, m, t = cfg.data, cfg.scenario, cfg.memory, cfg.train
    _require(d.image_size is None or d.image_size >= 8, f"data.image_size must be >= 8 or null, got {d.image_size}")
    _require(d.crop in ("pad", "resized"), f"data.crop must be 'pad' or 'resized', got {d.crop!r}")
    _require(
        (d.crop == "resized") == (d.crop_size is not None),
        f"data.crop_size goes with data.crop=resized (and only then); got crop={d.crop!r}, crop_size={d.crop_size}",
    )
    _require(
        d.subset is None or d.dataset == "imagenet_subset",
        f"data.subset names an ImageNet subset and goes with data.dataset=imagenet_subset, not {d.dataset!r}",
    )
    spec = resolve_spec(d)
    _require(
        d.crop_size is None or 8 <= d.crop_size <= spec.image_size,
        f"data.crop_size must be between 8 and the image size {spec.image_size}, got {d.crop_size}",
    )
    _require(d.train_per_class is None or d.train_per_class >= 1, f"data.train_per_class must be >= 1 or null, got {d.train_per_class}")
    _require(d.test_per_class is None or d.test_per_class >= 1, f"data.test_per_class must be >= 1 or null, got {d.test_per_class}")
    _require(d.normalize in Config.NORMALIZATIONS, f"data.normalize must be one of {Config.NORMALIZATIONS}, got {d.normalize!r}")
    _require(d.pad >= 0, f"data.pad must be >= 0, got {d.pad}")
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        _require(values is None or len(values) == spec.channels, f"{key} needs {spec.channels} value(s) for {spec.name}, got {values}")
    _require(d.std is None or all(v > 0 for v in d.std), f"data.std must be > 0, got {d.std}")
    _require(0.0 <= d.brightness <= 1.0, f"data.brightness must be in [0, 1], got {d.brightness}")
    _require(s.base_classes >= 0, f"scenario.base_classes must be >= 0, got {s.base_classes}")
    _require(
        s.base_classes < spec.num_classes,
        f"scenario.base_classes={s.base_classes} leaves no class for increments: {spec.name} has {spec.num_classes} classes",
    )
    _require(s.steps >= 1, f"scenario.steps must be >= 1, got {s.steps}")
    remaining = spec.num_classes - s.base_classes
    _require(
        remaining % s.steps == 0,
        f"scenario.steps={s.steps} does not divide the {remaining} classes left after "
        f"scenario.base_classes={s.base_classes} on {spec.name} ({spec.num_classes} classes)",
    )
    _require(
        (m.per_class is None) != (m.total is None),
        "set exactly one of memory.per_class and memory.total (the other to null, "
        f"e.g. --set memory.per_class=null); got per_class={m.per_class}, total={m.total}",
    )
    _require(m.per_class is None or m.per_class >= 0, f"memory.per_class must be >= 0, got {m.per_class}")
    _require(m.total is None or m.total >= 0, f"memory.total must be >= 0, got {m.total}")
    _require(m.selection in SELECTIONS, f"memory.selection must be one of {sorted(SELECTIONS)}, got {m.selection!r}")
    _require(cfg.model.shortcut in ("A", "B"), f"model.shortcut must be 'A' (zero padding) or 'B' (1x1 conv), got {cfg.model.shortcut!r}")
    _require(cfg.model.backbone in BACKBONES, f"model.backbone must be one of {sorted(BACKBONES)}, got {cfg.model.backbone!r}")
    if cfg.model.backbone.startswith("resnet18"):
        for key, value in RESNET18_FIXED.items():
            _require(
                getattr(cfg.model, key) == value,
                f"model.{key}={getattr(cfg.model, key)!r} is a CIFAR-ResNet option; {cfg.model.backbone} needs model.{key}={value!r}",
            )
    for name in ("epochs", "batch_size", "eval_batch_size"):
        value = getattr(t, name)
        _require(value >= 1, f"train.{name} must be >= 1, got {value}")
    _require(t.base_epochs is None or t.base_epochs >= 1, f"train.base_epochs must be >= 1 or null, got {t.base_epochs}")
    _require(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _require(t.base_lr is None or t.base_lr > 0, f"train.base_lr must be > 0 or null, got {t.base_lr}")
    _require(0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}")
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _require(0 < t.lr_decay <= 1, f"train.lr_decay must be in (0, 1], got {t.lr_decay}")
    _require(t.scheduler in Config.SCHEDULERS, f"train.scheduler must be one of {Config.SCHEDULERS}, got {t.scheduler!r}")
    _require(t.device.split(":")[0] in Config.DEVICES, f"train.device must be one of {Config.DEVICES} (cuda:N allowed), got {t.device!r}")
    _require(t.grad_clip_value is None or t.grad_clip_value > 0, f"train.grad_clip_value must be > 0 or null, got {t.grad_clip_value}")
    _require(t.threads is None or t.threads >= 1, f"train.threads must be >= 1 or null, got {t.threads}")
    _require(t.precision in ("fp32", "bf16"), f"train.precision must be 'fp32' or 'bf16', got {t.precision!r}")
    _require(t.compile in Config.COMPILE_MODES, f"train.compile must be one of {Config.COMPILE_MODES}, got {t.compile!r}")
    _require(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0 (0: only after each step), got {t.checkpoint_every}")
    for key, stones, epochs in (
        ("train.milestones", t.milestones, t.epochs),
        ("train.base_milestones", t.base_milestones or [], t.base_epochs or t.epochs),
    ):
        _require(all(0 < e < epochs for e in stones), f"{key} must lie strictly between 0 and the epoch count {epochs}, got {stones}")
        _require(list(stones) == sorted(set(stones)), f"{key} must be increasing, got {stones}")
    if isinstance(d.class_order, list):
        _require(
            sorted(d.class_order) == list(range(spec.num_classes)),
            f"data.class_order must be a permutation of 0..{spec.num_classes - 1} for {spec.name}",
        )
    elif isinstance(d.class_order, str):
        from .data.scenario import NAMED_ORDERS

        _require(d.class_order in NAMED_ORDERS, f"data.class_order must be a list or one of {sorted(NAMED_ORDERS)}, got {d.class_order!r}")
        _require(
            len(NAMED_ORDERS[d.class_order]) == spec.num_classes,
            f"data.class_order={d.class_order!r} has {len(NAMED_ORDERS[d.class_order])} classes, {spec.name} has {spec.num_classes}",
        )
    _require(cfg.sir.fc >= 0, f"sir.fc (tau) must be >= 0, got {cfg.sir.fc}")
    _require(0 < cfg.sir.ca <= 1, f"sir.ca (gamma) must be in (0, 1], got {cfg.sir.ca}")
    _require(cfg.sir.it >= 0, f"sir.it (lambda) must be >= 0, got {cfg.sir.it}")
    _require(cfg.sir.cosine_scale is None or cfg.sir.cosine_scale > 0, f"sir.cosine_scale must be > 0 or null, got {cfg.sir.cosine_scale}")
    _require(cfg.sir.sigmoid in ("margin", "weight"), f"sir.sigmoid must be 'margin' or 'weight', got {cfg.sir.sigmoid!r}")
    cfg.method.validate(cfg)
