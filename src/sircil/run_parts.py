"""A run's parts, built once from its config: ``build_run(cfg, device)``.

The data in the class order, the scenario, the method with its initial weights, the memory, the
training plug-ins, the normalization and the evaluator: what training (trainer.py), ``sircil
eval``, ``export`` and ``predict`` (inference.py) and ``sircil bench`` (through the trainer) all
start from, and the few operations they share: a step's training set and context, the plug-ins'
set-up of a step, growing the model to a checkpoint's step and loading it, evaluating a step.

Only what is read goes to the device. Training moves the whole training split there (the
trainer asks for it); restoring a checkpoint for inference moves the test images it evaluates,
the exemplars of a nearest-mean classifier and the images a plug-in measures, never the rest of
the training split (the labels, small, are always there).
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

from .config import Config
from .data.augment import BatchAugment, Normalizer
from .data.datasets import Dataset, DeviceSplit, load_dataset
from .data.memory import Memory
from .data.scenario import Scenario, apply_class_order, resolve_class_order
from .methods import Method, method_class
from .plugins import build_plugins
from .runfolder import RunFolder, RunFolderError
from .training.context import StepContext
from .training.evaluation import Evaluator
from .training.phase import Phase, Step, derive_seed

Fit = Callable[[Phase], tuple[int, float]]


def scenario_step(scenario: Scenario, t: int) -> Step:
    return Step(t, scenario.start(t), scenario.end(t))


def grow(method: Method, scenario: Scenario, last: int, first: int = 0) -> None:
    """Expand ``method``'s model by steps ``first`` to ``last`` (the steps before ``first`` already
    grown): the shape a checkpoint of step ``last`` loads into, which then replaces the weights
    the expansion drew."""
    for t in range(first, last + 1):
        method.expand(scenario_step(scenario, t))


class RunParts:
    """One run's parts on ``device``; ``data``: the config's dataset in ``class_order``."""

    def __init__(self, cfg: Config, device: torch.device, data: Dataset, class_order: list[int]):
        self.cfg, self.device = cfg, device
        self.spec, self.class_order, self.class_names = data.spec, class_order, data.class_names
        self.train, self.test = DeviceSplit(data.train, device), DeviceSplit(data.test, device)
        self.scenario = Scenario.from_config(cfg.scenario, self.spec.num_classes)
        torch.manual_seed(derive_seed(cfg.seed, "init"))  # the initial weights depend on the seed alone
        self.method: Method = method_class(cfg.method.name)(cfg, self.spec)
        self.method.model.to(device)
        self.withheld = self.method.withheld(self.train.labels)  # never trained on nor stored
        if cfg.train.channels_last:
            self.method.model.to(memory_format=torch.channels_last)
        self.memory = Memory(cfg.memory)
        self.plugins = build_plugins(cfg)
        self.class_steps = torch.tensor([self.scenario.step_of_class(k) for k in range(self.spec.num_classes)])

    @cached_property
    def normalizer(self) -> Normalizer:
        """As the run trained with it: computed on the device, from the training images where the
        config measures them (a copy moved for the measurement alone when they are not there)."""
        given = Normalizer.given(self.cfg.data, self.spec, self.device)
        if given is not None:
            return given
        train = self.train
        return Normalizer.from_config(self.cfg.data, self.spec, train.images if train.moved else train.host.images.to(self.device))

    @cached_property
    def augment(self) -> BatchAugment:
        return BatchAugment(self.cfg.data, self.spec, self.normalizer)

    @cached_property
    def evaluator(self) -> Evaluator:
        tc = self.cfg.train
        return Evaluator(
            self.method, self.train, self.test, self.normalizer, tc.eval_batch_size, tc.channels_last, tc.precision, self.augment.flip
        )

    def step(self, t: int) -> Step:
        return scenario_step(self.scenario, t)

    def task_bounds(self, step: Step) -> list[tuple[int, int]]:
        """The class range of every step up to ``step``, for per-task accuracies."""
        return [(self.scenario.start(j), self.scenario.end(j)) for j in range(step.index + 1)]

    def memory_indices(self) -> torch.Tensor:
        return self.memory.indices().to(self.device)

    def step_data(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's training set: every image of its new classes the method does not withhold, and the memory's exemplars."""
        labels = self.train.labels
        new_idx = torch.nonzero((labels >= step.start) & (labels < step.end) & ~self.withheld).flatten()
        return new_idx, self.memory_indices()

    def context(self, step: Step, indices: torch.Tensor, folder: Path, log: logging.Logger, is_main: bool, fit: Fit) -> StepContext:
        return StepContext(
            step=step, seed=self.cfg.seed, device=self.device, indices=indices, labels=self.train.labels,
            class_steps=self.class_steps, class_names=self.class_names, log=log, is_main=is_main,
            folder=folder, memory_indices=self.memory_indices, embed_indices=self.evaluator.embed_indices, fit=fit,
        )

    def begin_plugins(self, ctx: StepContext) -> None:
        """The plug-ins measure the step on the model as it stands: the previous step's, before it grows."""
        for plugin in self.plugins.values():
            plugin.begin_step(ctx, self.method.head)

    def restore(self, state: dict[str, Any], first: int = 0) -> int:
        """The model and memory of a checkpoint; the model grows from step ``first`` (steps before it
        already grown) to the checkpoint's. Returns its step."""
        t = state["step"]
        grow(self.method, self.scenario, t, first)
        self.method.load_state_dict(state["method_state"])
        self.memory.load_state_dict(state["memory"])
        return t

    def restore_for_inference(self, folder: RunFolder, t: int | None, log: logging.Logger) -> Step:
        """Step ``t`` of the run in ``folder`` (default: the last checkpointed) as the run evaluated it:
        the plug-ins measure the step's training set on the previous step's model, as in training,
        then the step's model and memory are loaded."""
        state = folder.load_checkpoint(t)
        t = state["step"]
        if state.get("method") != self.cfg.method.name:
            raise RunFolderError(f"{folder.checkpoint_path(t)} was made by method {state.get('method')!r}, the config names {self.cfg.method.name!r}")
        if t > 0:
            self.restore(folder.load_checkpoint(t - 1))
        step = self.step(t)
        self.begin_plugins(self.context(step, torch.cat(self.step_data(step)), folder.path, log, True, _trains_nothing))
        self.restore(state, first=t)
        return step

    def evaluate(self, step: Step) -> tuple[dict[str, Any], list[float], list[float] | None]:
        """The step's record and its rows of the accuracy matrices (CNN, and NME or None), on the test set."""
        return self.evaluator.evaluate(step, self.task_bounds(step), self.memory_indices(), list(self.plugins.values()))


def _trains_nothing(phase: Phase) -> tuple[int, float]:
    raise RuntimeError(f"phase {phase.name}: a step restored for inference trains nothing; a plug-in's begin_step may not call ctx.fit")


def build_run(cfg: Config, device: torch.device, dataset: Dataset | None = None) -> RunParts:
    """The parts of the run of ``cfg`` on ``device``. ``dataset``: the config's data, when already
    loaded. ``train.threads``, where set, becomes the process's thread count."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    dataset = load_dataset(cfg.data) if dataset is None else dataset
    order = resolve_class_order(cfg.data, dataset.spec.num_classes)
    return RunParts(cfg, device, apply_class_order(dataset, order), order)
