"""Use a trained model: evaluate a run's checkpoint, export it to one file, load either, predict.

An exported model is one ``torch.save`` file: the config, the dataset's spec, the class names in
the model's order, the step, the method's weights, the normalization and input size, the
nearest-mean-of-exemplars class means where the method classifies by them, and what the plug-ins
need at inference. ``load_run`` accepts it or a run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .config import Config, config_from_dict, load_config
from .config_io import apply_overrides
from .data.augment import Normalizer
from .data.custom import decode_image
from .data.datasets import DatasetSpec
from .data.scenario import Scenario
from .distributed import resolve_device, to_cpu
from .methods import Method, method_class
from .plugins import build_plugins
from .run_parts import RunParts, build_run, grow
from .runfolder import RunFolder, RunFolderError, atomic_torch_save, default_out, quiet_logger
from .trainer import run_experiment
from .training.phase import Step

EXPORT_FORMAT = "sircil-model/1"


def _restored(folder: Path, step: int | None, overrides: Sequence[str], device: str | None) -> tuple[RunParts, Step]:
    """The run in ``folder`` (its config with ``overrides``, on ``device`` or its own) at its
    checkpoint of ``step`` (default: the last), as it evaluated that step."""
    run = RunFolder(folder)
    if not run.config_file.is_file():
        raise RunFolderError(f"{folder} is not a run folder: no config.yaml in it (give the folder `sircil run` wrote)")
    cfg = load_config(run.config_file, list(overrides))
    if device is not None:
        cfg.train.device = device
    parts = build_run(cfg, resolve_device(cfg.train.device))
    return parts, parts.restore_for_inference(run, step, quiet_logger(0))


def evaluate_run(folder: str | Path, step: int | None = None, overrides: Sequence[str] = (), device: str | None = None) -> dict[str, Any]:
    """The record of a checkpointed step (default: the last), computed afresh: on the run's own test
    set it equals what the run recorded; ``overrides`` (e.g. ``data.root=...``) evaluate on other data."""
    parts, restored = _restored(Path(folder), step, overrides, device)
    record, row, row_nme = parts.evaluate(restored)
    return {**record, "accuracy_per_task": row, **({"accuracy_per_task_nme": row_nme} if row_nme is not None else {})}


def export_run(folder: str | Path, out: str | Path, step: int | None = None, device: str | None = None) -> Path:
    """One self-contained file for ``load_run`` and ``sircil predict``."""
    atomic_torch_save(Path(out), _bundle(Path(folder), step, device))
    return Path(out)


def _bundle(folder: Path, step: int | None, device: str | None) -> dict[str, Any]:
    """What an exported file holds, from a run folder's checkpoint of ``step``."""
    parts, restored = _restored(folder, step, (), device)
    method = parts.method
    means = parts.evaluator.class_means(parts.memory_indices(), restored.end) if method.has_nme else None
    n = parts.normalizer
    return {
        "format": EXPORT_FORMAT,
        "config": parts.cfg.to_dict(),
        "spec": dataclasses.asdict(parts.spec),
        "step": restored.index,
        "class_names": parts.class_names[: restored.end],
        "method_state": to_cpu(method.state_dict()),
        "normalizer": {"shift": n.shift.cpu(), "scale": n.scale.cpu(), "fill": n.fill.cpu(), "eval_crop": n.eval_crop},
        "image_size": int(parts.train.host.images.shape[-1]),
        "class_means": None if means is None else means.cpu(),
        "plugins": {name: plugin.inference_state() for name, plugin in parts.plugins.items()},
    }


@dataclass
class TrainedModel:
    """A trained model ready to classify images, as its run evaluated them."""

    config: Config
    step: int
    class_names: list[str]
    method: Method
    normalizer: Normalizer
    image_size: int
    channels: int
    class_means: torch.Tensor | None
    plugins: dict[str, Any]
    device: torch.device
    metrics: dict[str, Any] | None = None

    @property
    def rule(self) -> str:
        """``nme`` where the method classifies by its exemplars' class means (iCaRL), else ``cnn``."""
        return "nme" if self.class_means is not None and self.method.inference == "nme" else "cnn"

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes) of uint8 images N x C x H x W of the model's input size.
        For the nearest-mean rule they are the softmax of the negative squared distances to the
        class means: a ranking, not a calibrated probability."""
        self.method.model.eval()
        x = self.normalizer.eval_view(images.to(self.device))
        out = self.method.eval_logits(x)
        for plugin in self.plugins.values():
            out = plugin.adjust_inference(out)
        classes = len(self.class_names)
        if self.rule == "nme":
            assert self.class_means is not None  # the rule is nme only with class means
            return F.softmax(-torch.cdist(F.normalize(out["features"].float(), dim=1), self.class_means.to(self.device)) ** 2, dim=1)
        return F.softmax(out["logits"][:, :classes].float(), dim=1)

    def load_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        """Image files (PNG, JPEG, any size, grey or colour) as the model's input: shorter side resized
        and center-cropped to the training images' size, in their channels."""
        return torch.stack([decode_image(Path(p), self.image_size, self.channels) for p in paths])

    def predict_files(self, paths: Sequence[str | Path], top: int = 5) -> list[list[tuple[str, float]]]:
        probabilities = self.predict(self.load_images(paths))
        values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
        return [[(self.class_names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def load_run(path: str | Path, step: int | None = None, device: str = "cpu") -> TrainedModel:
    """A run folder (its step ``step``, default the last) or a file written by ``export_run``."""
    path = Path(path)
    if path.is_dir():
        if not RunFolder(path).config_file.is_file():
            raise RunFolderError(f"{path} is not a run folder: no config.yaml in it")
        model = _model(_bundle(path, step, device), device)
        metrics_file = RunFolder(path).metrics_file
        model.metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        return model
    if not path.is_file():
        raise RunFolderError(f"{path}: no such run folder or exported model")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise RunFolderError(f"{path} is not a model exported by `sircil export` ({exc})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != EXPORT_FORMAT:
        raise RunFolderError(f"{path} is not a model exported by `sircil export` (format {EXPORT_FORMAT}); for a run folder give the folder")
    return _model(bundle, device)


def _model(bundle: dict[str, Any], device: str) -> TrainedModel:
    cfg = config_from_dict(bundle["config"])
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in bundle["spec"].items()}  # the spec's tuple fields, should a bundle hold them as lists
    spec = DatasetSpec(**fields)
    target = resolve_device(device)
    method = method_class(cfg.method.name)(cfg, spec)
    grow(method, Scenario.from_config(cfg.scenario, spec.num_classes), bundle["step"])
    method.load_state_dict(bundle["method_state"])
    method.model.to(target)
    plugins = build_plugins(cfg)
    for name, plugin in plugins.items():
        plugin.load_inference_state({k: v.to(target) if isinstance(v, torch.Tensor) else v for k, v in bundle["plugins"].get(name, {}).items()})
    n = bundle["normalizer"]
    normalizer = Normalizer(n["shift"].to(target), n["scale"].to(target), n["fill"].to(target), n["eval_crop"])
    return TrainedModel(
        config=cfg, step=bundle["step"], class_names=list(bundle["class_names"]), method=method, normalizer=normalizer,
        image_size=bundle["image_size"], channels=spec.channels, class_means=bundle["class_means"], plugins=plugins, device=target,
    )


def run(config: str | Path | dict, overrides: Sequence[str] = (), out: str | Path | None = None) -> dict[str, Any]:
    """Train one run from a config file or dict with ``--set``-style overrides and return its
    metrics; an interrupted run of the same config in ``out`` resumes, a finished one is returned as is."""
    if isinstance(config, dict):
        cfg = config_from_dict(apply_overrides(json.loads(json.dumps(config)), list(overrides)))
        name = f"{cfg.method.name}-api"
    else:
        cfg = load_config(config, list(overrides))
        name = str(config)
    folder = RunFolder(Path(out) if out is not None else default_out(name, cfg.hash()))
    if folder.is_finished() and folder.recorded_hash() == cfg.hash():
        return json.loads(folder.metrics_file.read_text())
    return run_experiment(cfg, folder.path)
