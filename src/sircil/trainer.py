"""The incremental run: per step, the plug-ins measure the step's data, the method grows its
model, the main phase trains (or the base step comes from the cache), the memory is updated,
the method's own phases run, the step is evaluated, and metrics, plot and a checkpoint are
written. The trainer only orchestrates: the fitting loop, evaluation, the base-step cache and
the results live in ``training/``; what a method or plug-in sees of a step is its
:class:`StepContext`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .data.augment import BatchAugment, Normalizer
from .data.datasets import Dataset, load_dataset
from .data.memory import Memory
from .data.scenario import Scenario, apply_class_order, resolve_class_order
from .distributed import SINGLE, Distributed, resolve_device
from .methods import Method, method_class
from .plugins import build_plugins
from .locks import exclusive
from .runfolder import LOCK_NAME, RunFolder, RunFolderError, atomic_write_json, provenance, quiet_logger, setup_logger
from .training.base_cache import base_cache_path, cached_base_step
from .training.context import StepContext
from .training.evaluation import Evaluator, peak_memory_mb
from .training.loop import Fitter, resolve_compile
from .training.phase import LossFn, Phase, Step, derive_seed, main_phase
from .training.progress import Progress
from .training.run_log import RunLog


class Trainer:
    def __init__(self, cfg: Config, folder: RunFolder, log: logging.Logger, dist: Distributed = SINGLE, dataset: Dataset | None = None):
        self.cfg, self.folder, self.log, self.dist = cfg, folder, log, dist
        self.device = dist.device(resolve_device(cfg.train.device))
        self.compile_mode = resolve_compile(cfg.train.compile, self.device, dist.world)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        dataset = load_dataset(cfg.data) if dataset is None else dataset
        self.spec = dataset.spec
        self.class_order = resolve_class_order(cfg.data, self.spec.num_classes)
        dataset = apply_class_order(dataset, self.class_order)
        self.class_names = dataset.class_names
        self.train_split = dataset.train.to(self.device)
        self.test_split = dataset.test.to(self.device)
        self.scenario = Scenario.from_config(cfg.scenario, self.spec.num_classes)
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.method: Method = method_class(cfg.method.name)(cfg, self.spec)
        self.method.model.to(self.device)
        self.withheld = self.method.withheld(self.train_split.labels)  # never trained on nor stored
        if cfg.train.channels_last:
            self.method.model.to(memory_format=torch.channels_last)
        self.memory = Memory(cfg.memory)
        self.normalizer = Normalizer.from_config(cfg.data, self.spec, self.train_split.images)
        augment = BatchAugment(cfg.data, self.spec, self.normalizer)
        self.plugins = build_plugins(cfg)
        self.class_steps = torch.tensor([self.scenario.step_of_class(k) for k in range(self.spec.num_classes)])
        self.progress = Progress(self.method.has_nme)
        self.run_log = RunLog(folder, log, cfg.log.tensorboard)
        tc = cfg.train
        self.evaluator = Evaluator(
            self.method, self.train_split, self.test_split, self.normalizer, tc.eval_batch_size, tc.channels_last, tc.precision, augment.flip
        )
        self.fitter = Fitter(
            self.method, tc, cfg.seed, cfg.hash(), self.device, dist, self.train_split, augment, log,
            self.compile_mode, tc.compile == "auto", folder.save_partial, self.run_log.epoch,
        )

    def step_info(self, t: int) -> Step:
        return Step(t, self.scenario.start(t), self.scenario.end(t))

    def task_bounds(self, step: Step) -> list[tuple[int, int]]:
        """The class range of every step up to ``step``, for per-task accuracies."""
        return [(self.scenario.start(j), self.scenario.end(j)) for j in range(step.index + 1)]

    def run(self) -> dict[str, Any]:
        first = self._resume()
        self.log.info(
            "%s on %s: %d train / %d test images on %s, steps of %s classes, order %s...",
            self.cfg.method.name, self.spec.name, len(self.train_split), len(self.test_split), self.device,
            list(self.scenario.increments), self.class_order[:10],
        )
        for t in range(first, self.scenario.num_steps):
            self.run_step(t, self.load_partial(t) if t == first else None)
        metrics = self.metrics(finished=True)
        if self.dist.is_main:
            self.folder.write_metrics(metrics)
        self.log.info(
            "done: average incremental accuracy %.2f, last %.2f, forgetting %.2f%s",
            metrics["average_incremental_accuracy"], metrics["last_accuracy"], metrics["forgetting"],
            f" (NME: {metrics['nme']['average_incremental_accuracy']:.2f} / {metrics['nme']['last_accuracy']:.2f})" if "nme" in metrics else "",
        )
        return metrics

    def context(self, step: Step, indices: torch.Tensor) -> StepContext:
        return StepContext(
            step=step, seed=self.cfg.seed, device=self.device, indices=indices, labels=self.train_split.labels,
            class_steps=self.class_steps, class_names=self.class_names, log=self.log, is_main=self.dist.is_main,
            folder=self.folder.path, memory_indices=lambda: self.memory.indices().to(self.device),
            embed_indices=self.evaluator.embed_indices, fit=lambda phase: self.fitter.fit(phase, step),
        )

    def begin_step(self, t: int) -> tuple[Step, StepContext]:
        """The step's training set and context; the plug-ins measure it on the previous step's model,
        then the method grows its model and prepares it."""
        step = self.step_info(t)
        new_idx, mem_idx = self.step_data(step)
        self.log.info(
            "step %d/%d: classes %d-%d new (%s), %d new images + %d exemplars of %d old classes",
            t, self.scenario.num_steps - 1, step.start, step.end - 1,
            ", ".join(self.class_names[step.start: step.end][:5]) + ("..." if step.num_new > 5 else ""),
            new_idx.numel(), mem_idx.numel(), step.num_old,
        )
        return step, self.prepare(step, torch.cat([new_idx, mem_idx]))

    def step_data(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's training set: every image of its new classes the method does not withhold, and the memory's exemplars."""
        labels = self.train_split.labels
        new_idx = torch.nonzero((labels >= step.start) & (labels < step.end) & ~self.withheld).flatten()
        return new_idx, self.memory.indices().to(self.device)

    def prepare(self, step: Step, indices: torch.Tensor) -> StepContext:
        ctx = self.context(step, indices)
        for plugin in self.plugins.values():
            plugin.begin_step(ctx, self.method.head)
        torch.manual_seed(derive_seed(self.cfg.seed, "expand", step.index))
        self.method.expand(step)
        self.method.begin_step(ctx)
        return ctx

    def run_step(self, t: int, partial: dict[str, Any] | None = None) -> None:
        """Train, evaluate and checkpoint step ``t``; ``partial`` continues its main phase mid-way."""
        wall = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        step, ctx = self.begin_step(t)
        images_seen, train_seconds = self.train_main(ctx, partial)
        self.update_memory(step)
        self.method.after_step(ctx)
        plugins = list(self.plugins.values())
        record, row, row_nme = self.dist.from_main(lambda: self.evaluator.evaluate(step, self.task_bounds(step), ctx.memory_indices(), plugins))
        counts = self.memory.counts()
        record.update(
            memory_size=sum(counts.values()),
            memory_per_class=self.memory.quota(len(counts)),
            train_images=int(ctx.indices.numel()),
            wall_seconds=round(time.perf_counter() - wall, 3),
            train_images_per_second=round(images_seen / max(train_seconds, 1e-9), 1),
            parameters=sum(p.numel() for p in self.method.model.parameters()),
            peak_memory_mb=round(peak_memory_mb(self.device), 1),
        )
        self.progress.add(record, row, row_nme)
        if self.dist.is_main:
            metrics = self.metrics(finished=False)
            self.folder.save_checkpoint(t, self.checkpoint_state(t))
            self.folder.remove_partial(t)
            self.folder.write_metrics(metrics)
            self.folder.write_plot(metrics, f"{self.run_label()} on {self.spec.name}, memory {self.memory_label()}")
        self.run_log.step(record)

    def train_main(self, ctx: StepContext, partial: dict[str, Any] | None) -> tuple[int, float]:
        """The step's main phase; the base step is taken from the cache when a run with the same
        base-step training left it there. Returns (images trained on, seconds)."""
        step = ctx.step
        phase = self.main_phase(step, ctx.indices, "train")

        def train() -> tuple[int, float]:
            return self.fitter.fit(phase, step, checkpoints=True, resume=partial)

        if step.index > 0:
            return train()
        counts = torch.bincount(self.train_split.labels[ctx.indices]).tolist()
        key = self.method.base_step_key(self.cfg.method)
        if self.withheld.any():  # the base step trains without them (BiC's pool, sized by the memory): share it only at as many
            key["withheld"] = int(self.withheld.sum())
        cache = base_cache_path(self.cfg, self.device.type, counts, self.plugins, key)
        seen, self.progress.base_step_cached = cached_base_step(cache, self.method, train, self.dist, self.log)
        return seen

    def main_phase(self, step: Step, indices: torch.Tensor, name: str) -> Phase:
        """The step's main phase from ``train:`` (the base step's own epochs, lr and milestones
        on step 0), as the method adjusts it."""
        phase = main_phase(self.cfg.train, step, name, indices, self.main_loss(step), self.method.param_groups(step))
        return self.method.main_phase(phase, step)

    def main_loss(self, step: Step) -> LossFn:
        """The method's losses on its outputs as the plug-ins adjust them, plus the plug-ins' own terms."""
        method, plugins = self.method, list(self.plugins.values())

        def loss_fn(x: torch.Tensor, y: torch.Tensor):
            out = method.forward(x, step)
            for plugin in plugins:
                out = plugin.adjust(out, y)
            terms = method.losses(out, y, step)
            for plugin in plugins:
                terms.update(plugin.extra_losses(out, y))
            return terms, out[method.head.logits]

        return loss_fn

    def update_memory(self, step: Step) -> None:
        labels = self.train_split.labels
        per_class = {k: torch.nonzero((labels == k) & ~self.withheld).flatten() for k in range(step.start, step.end)}
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, "memory", step.index))

        def select() -> dict:
            self.memory.add_classes(per_class, self.evaluator.embed_indices, generator)
            return self.memory.state_dict()

        state = self.dist.from_main(select)  # herding once, on rank 0
        if not self.dist.is_main:
            self.memory.load_state_dict(state)

    # --- results, checkpoints, resume -----------------------------------------------

    def run_label(self) -> str:
        return " + ".join([self.cfg.method.name, *(plugin.label for plugin in self.plugins.values())])

    def memory_label(self) -> str:
        m = self.cfg.memory
        return f"{m.per_class}/class" if m.per_class is not None else f"{m.total} total"

    def metrics(self, finished: bool) -> dict[str, Any]:
        header = {"method": self.cfg.method.name, "dataset": self.spec.name, "config_hash": self.cfg.hash()}
        return self.progress.metrics(header, self.class_order, finished)

    def checkpoint_state(self, t: int) -> dict[str, Any]:
        return {
            "step": t,
            "config_hash": self.cfg.hash(),
            "method": self.cfg.method.name,
            "method_state": self.method.state_dict(),
            "memory": self.memory.state_dict(),
            **self.progress.state(),
        }

    def load_partial(self, t: int) -> dict[str, Any] | None:
        """The mid-step checkpoint of step ``t``, if one was left by an interrupted run of this config."""
        state = self.dist.from_main(lambda: self.folder.load_partial(t, self.log))
        if state is None:
            return None
        if state.get("config_hash") != self.cfg.hash() or state.get("step") != t:
            self.log.warning("ignoring %s: made by another config or for another step", self.folder.partial_path(t))
            return None
        return state

    def _resume(self) -> int:
        state = self.dist.from_main(lambda: self.folder.latest_checkpoint(self.log))
        if state is None:
            return 0
        if state.get("method") != self.cfg.method.name or state.get("config_hash") != self.cfg.hash():
            raise RunFolderError(
                f"checkpoint in {self.folder.checkpoint_dir} was made by method {state.get('method')!r} with config "
                f"{str(state.get('config_hash'))[:12]}, not by this config ({self.cfg.method.name!r}, {self.cfg.hash()[:12]}); "
                "use another --out folder or --overwrite"
            )
        t = self.restore(state)
        self.progress.restore(state, t)
        self.log.info("resuming after step %d from %s", t, self.folder.checkpoint_path(t))
        return t + 1

    def restore(self, state: dict[str, Any], first: int = 0) -> int:
        """The model and memory of a checkpoint; the model grows from step ``first`` (steps before it
        already grown) to the checkpoint's. Returns its step."""
        t = state["step"]
        for s in range(first, t + 1):
            self.method.expand(self.step_info(s))
        self.method.load_state_dict(state["method_state"])
        self.memory.load_state_dict(state["memory"])
        return t

    def restore_for_inference(self, t: int | None = None) -> Step:
        """Step ``t`` (default: the last checkpointed) as the run evaluated it: the plug-ins measure the
        step's training set on the previous step's model, as in training, then the step's model and
        memory are loaded."""
        state = self.folder.load_checkpoint(t)
        t = state["step"]
        if state.get("method") != self.cfg.method.name:
            raise RunFolderError(f"{self.folder.checkpoint_path(t)} was made by method {state.get('method')!r}, the config names {self.cfg.method.name!r}")
        if t > 0:
            self.restore(self.folder.load_checkpoint(t - 1))
        step = self.step_info(t)
        ctx = self.context(step, torch.cat(self.step_data(step)))
        for plugin in self.plugins.values():
            plugin.begin_step(ctx, self.method.head)
        self.restore(state, first=t)
        return step

    def evaluate_step(self, step: Step) -> dict[str, Any]:
        """The record of ``step`` on the run's test set (or the data the config now names)."""
        memory = self.memory.indices().to(self.device)
        record, row, row_nme = self.evaluator.evaluate(step, self.task_bounds(step), memory, list(self.plugins.values()))
        return {**record, "accuracy_per_task": row, **({"accuracy_per_task_nme": row_nme} if row_nme is not None else {})}


def run_experiment(cfg: Config, out: str | Path, resume: bool = False, overwrite: bool = False, dist: Distributed = SINGLE) -> dict[str, Any]:
    """Run (or resume) ``cfg`` in the run folder ``out``. Under ``torchrun`` every process calls
    this with its ``dist``; rank 0 alone locks, prepares and writes the folder."""
    folder = RunFolder(out)
    resolve_device(cfg.train.device)  # bad input fails before the run folder exists, and leaves none behind
    dataset = load_dataset(cfg.data)
    threads = torch.get_num_threads()  # train.threads applies to this run only, not to the runs after it in this process
    with contextlib.ExitStack() as held:
        held.callback(torch.set_num_threads, threads)

        def prepare() -> None:
            held.enter_context(exclusive(folder.path / LOCK_NAME.removesuffix(".lock")))  # two processes never write one run folder
            folder.prepare(cfg.to_yaml(), cfg.hash(), overwrite=overwrite, require_existing=resume)

        dist.from_main(prepare)
        log = setup_logger(folder.path / "log.txt") if dist.is_main else quiet_logger(dist.rank)
        try:
            trainer = Trainer(cfg, folder, log, dist, dataset)
            if dist.is_main:
                atomic_write_json(folder.path / "provenance.json", {
                    **provenance(cfg.hash(), trainer.device), "compile": trainer.compile_mode, "processes": dist.world,
                })
            return trainer.run()
        finally:
            for handler in list(log.handlers):
                handler.close()
                log.removeHandler(handler)
