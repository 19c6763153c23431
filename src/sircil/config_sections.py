"""The sections of a run configuration, one dataclass each with its own range checks
(``Config`` in config.py gathers them)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import ClassVar

from .config_io import require


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

    SCHEDULERS: ClassVar[tuple[str, ...]] = ("cosine", "cosine_lagged", "step", "constant")
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
class WandbConfig:
    """Weights & Biases tracking (training/wandb_log.py): one W&B run per run folder, its id from
    the config hash, so that a resumed run continues its W&B run."""

    mode: str = "disabled"  # "online", "offline" (files in <run>/wandb/, uploaded later by wandb sync) or "disabled"
    project: str = "sircil"
    entity: str | None = None  # W&B's default entity where null
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    MODES: ClassVar[tuple[str, ...]] = ("online", "offline", "disabled")

    def validate(self) -> None:
        require(self.mode in self.MODES, f"log.wandb.mode must be one of {self.MODES}, got {self.mode!r}")
        require(
            self.mode == "disabled" or importlib.util.find_spec("wandb") is not None,
            f"log.wandb.mode: {self.mode} needs the wandb package (.venv/bin/pip install 'wandb>=0.19.10'), "
            "or set log.wandb.mode: disabled",
        )


@dataclass
class LogConfig:
    """What a run writes beside log.txt and metrics.json (every epoch is in metrics.jsonl)."""

    tensorboard: bool = False  # TensorBoard event files in <run>/tensorboard (needs the tensorboard package)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        require(
            not self.tensorboard or importlib.util.find_spec("tensorboard") is not None,
            "log.tensorboard: true needs the tensorboard package (.venv/bin/pip install tensorboard), or set log.tensorboard: false",
        )
        self.wandb.validate()


@dataclass
class PluginConfig:
    """A training plug-in's section (plugins/base.py registers it with the plug-in): ``enabled``
    switches the plug-in on; a subclass adds its options and checks them in ``validate``."""

    enabled: bool = False

    def validate(self) -> None:
        """Range checks of the section's own options."""


# SIR's and logit adjustment's sections stay here, where earlier code imports them from; a new
# plug-in defines its section in its own file.
@dataclass
class SIRConfig(PluginConfig):
    """SIR plug-in (sir.py): each part has its own switch, so ablations are a --set away."""

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
class LogitAdjustmentConfig(PluginConfig):
    """Logit adjustment (Menon et al., ICLR 2021) as a plug-in (plugins/logit_adjustment.py): the
    prior correction from the step's class counts alone, SIR's frequency compensation without
    its attenuation, transfer or per-head rules."""

    tau: float = 1.0
    # "loss": the logit-adjusted loss (training logits + tau log prior; tau 1 is the balanced
    # softmax); "post_hoc": train as usual, subtract tau log prior from the logits at inference.
    mode: str = "loss"

    MODES: ClassVar[tuple[str, ...]] = ("loss", "post_hoc")

    def validate(self) -> None:
        require(self.tau >= 0, f"logit_adjustment.tau must be >= 0, got {self.tau}")
        require(self.mode in self.MODES, f"logit_adjustment.mode must be one of {self.MODES}, got {self.mode!r}")
