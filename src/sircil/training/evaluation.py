"""A step's evaluation: one batched pass over the test images seen so far gives the CNN accuracy,
the old/new logit bias and, for methods that have it, the nearest-mean-of-exemplars accuracy; the
record also holds the head's learned scale and what each plug-in applied in the step."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..data.augment import Normalizer
from ..data.datasets import DeviceSplit
from ..evaluate import batched, class_means, embed_images, infer, nme_predict
from ..metrics import step_accuracies, task_accuracies
from .context import HeadSpec
from .phase import Step, autocast

Outputs = dict[str, torch.Tensor]


class Inference(Protocol):
    """What evaluation needs of a method (and of the plug-ins' inference adjustments); read-only, so a
    method's class attributes and its own model class satisfy it."""

    @property
    def has_nme(self) -> bool: ...

    @property
    def model(self) -> torch.nn.Module: ...

    @property
    def head(self) -> HeadSpec: ...

    def eval_logits(self, x: torch.Tensor) -> Outputs: ...

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


class Recorder(Protocol):
    def adjust_inference(self, out: Outputs) -> Outputs: ...

    def record(self, logits: torch.Tensor, labels: torch.Tensor, step: Step) -> dict[str, Any]: ...

    def step_record(self, scale: float) -> dict[str, Any]: ...


def mean_logits(logits: torch.Tensor, start: int) -> tuple[float, float]:
    """Mean old-class and new-class logit over the test set; their difference is the bias SIR targets."""
    return float(logits[:, :start].mean()), float(logits[:, start:].mean())


def peak_memory_mb(device: torch.device) -> float:
    """This step's peak device memory on CUDA; on CPU the process's peak resident memory so far."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


@dataclass
class Evaluator:
    method: Inference
    train: DeviceSplit  # its images are read at indices only (exemplars, a step's training set)
    test: DeviceSplit
    normalizer: Normalizer
    batch_size: int
    channels_last: bool
    precision: str
    flip: bool  # NME class means average each exemplar with its flip, as the training augmentation flips

    def embed(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        self.method.model.eval()
        with autocast(self.precision, images.device):
            return embed_images(self.method.embed, images, self.batch_size, self.normalizer, self.channels_last, flip)

    def class_means(self, memory: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The nearest-mean-of-exemplars classifier: each class's normalized mean exemplar feature."""
        return class_means(self.embed(self.train.take(memory), flip=self.flip), self.train.labels[memory], num_classes)

    def embed_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embed(self.train.take(indices))

    def outputs(self, images: torch.Tensor, plugins: list[Recorder]) -> Outputs:
        """Inference outputs (``logits``, ``features``) of a batch of raw images, as plug-ins leave them."""
        self.method.model.eval()
        with autocast(self.precision, images.device):

            def forward(x: torch.Tensor) -> Outputs:
                out = self.method.eval_logits(x)
                for plugin in plugins:
                    out = plugin.adjust_inference(out)
                return out

            return infer(forward, images, self.batch_size, self.normalizer, self.channels_last)

    def head_scale(self, images: torch.Tensor) -> float | None:
        """The learned scale the method's head names (``HeadSpec.scale``) as the model now stands,
        None for plain logits. It depends on no input: one image's forward pass reads it."""
        key = self.method.head.scale
        if key is None:
            return None
        self.method.model.eval()
        with torch.inference_mode(), autocast(self.precision, images.device):
            return float(self.method.eval_logits(next(batched(images[:1], 1, self.normalizer, self.channels_last)))[key])

    def evaluate(
        self, step: Step, bounds: list[tuple[int, int]], memory: torch.Tensor, plugins: list[Recorder]
    ) -> tuple[dict[str, Any], list[float], list[float] | None]:
        """The step's record and its rows of the accuracy matrices (CNN, and NME or None)."""
        mask = self.test.labels < step.end
        images, labels = self.test.images[mask], self.test.labels[mask]
        out = self.outputs(images, plugins)
        pred = out["logits"][:, : step.end].argmax(1)
        cnn = step_accuracies(pred, labels, step.start)
        row, row_nme = task_accuracies(pred, labels, bounds), None
        record: dict[str, Any] = {
            "step": step.index,
            "classes_seen": step.end,
            "accuracy": cnn["all"],
            "accuracy_old": cnn["old"],
            "accuracy_new": cnn["new"],
        }
        scale = self.head_scale(images)
        if scale is not None:
            record["scale"] = scale
        for plugin in plugins:
            record.update(plugin.step_record(1.0 if scale is None else scale))
        if step.num_old > 0:
            logits = out["logits"][:, : step.end]
            old, new = mean_logits(logits, step.start)
            record.update(mean_logit_old=old, mean_logit_new=new, logit_bias_old_minus_new=old - new)
            for plugin in plugins:
                record.update(plugin.record(logits, labels, step))
        if self.method.has_nme:
            means = self.class_means(memory, step.end)
            pred_nme = nme_predict(out["features"], means)
            nme = step_accuracies(pred_nme, labels, step.start)
            row_nme = task_accuracies(pred_nme, labels, bounds)
            record.update(accuracy_nme=nme["all"], accuracy_nme_old=nme["old"], accuracy_nme_new=nme["new"])
        return record, row, row_nme
