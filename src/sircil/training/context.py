"""What a method and a training plug-in see of a step: its data, the memory, the current model's
embedding, a way to run an extra phase, seeded generators and the log. Never the trainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..runfolder import atomic_torch_save
from .phase import Phase, Step, derive_seed


@dataclass(frozen=True)
class HeadSpec:
    """The classifier a method's classification loss meets, as logit-rectifying plug-ins need it:
    ``logits``: the output entry that loss reads (the one plug-ins adjust); ``scale``: the entry
    holding the scale of cosine similarities, None for plain logits (the step's record gives it
    after the step's training); ``kind``: "linear" (softmax over plain logits), "cosine" (softmax
    over scaled similarities) or "sigmoid" (independent sigmoids); ``aux``: the entry of an
    auxiliary softmax head over every old class as one, then each new class (DER's), which
    frequency-rectifying plug-ins adjust too, None for none (or none to adjust)."""

    logits: str = "logits"
    scale: str | None = None
    kind: str = "linear"
    aux: str | None = None


@dataclass(frozen=True)
class StepContext:
    """One step's view of the run. Tensors live on the training device; ``labels`` are the whole
    training split's (index them with ``indices`` or ``memory_indices()``)."""

    step: Step
    seed: int
    device: torch.device
    indices: torch.Tensor  # the step's training set: new classes' samples, then the memory's
    labels: torch.Tensor
    class_steps: torch.Tensor  # class_steps[k]: the step that introduced class k
    class_names: list[str]
    log: logging.Logger
    is_main: bool
    folder: Path  # the run folder, for a plug-in's artifacts (written by the main process only)
    memory_indices: Callable[[], torch.Tensor]  # the memory as it is now (after its update, in after_step)
    embed_indices: Callable[[torch.Tensor], torch.Tensor]  # features of training samples under the current model
    fit: Callable[[Phase], tuple[int, float]]  # runs an extra phase; (images trained on, seconds)

    @property
    def step_labels(self) -> torch.Tensor:
        return self.labels[self.indices]

    def class_counts(self) -> torch.Tensor:
        """Training samples of each class seen so far in this step's training set."""
        return torch.bincount(self.step_labels, minlength=self.step.num_seen)[: self.step.num_seen]

    def generator(self, purpose: str) -> torch.Generator:
        """A generator seeded for this run, step and purpose alone."""
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, purpose, self.step.index))

    def embed_classes(self, classes: range) -> dict[int, torch.Tensor]:
        """L2-normalized features of every training sample of each class, under the current model."""
        return {k: self.embed_indices(torch.nonzero(self.labels == k).flatten()) for k in classes}

    def save_artifact(self, name: str, update: Callable[[Any], Any]) -> None:
        """Read-modify-write ``name`` in the run folder atomically (main process only); ``update``
        receives the saved object (None the first time) and returns the new one."""
        if not self.is_main:
            return
        path = self.folder / name
        atomic_torch_save(path, update(torch.load(path, weights_only=False) if path.is_file() else None))
