"""The incremental run: per step, the plug-ins measure the step's data, the method grows its
model, the main phase trains (or the base step comes from the cache), the memory is updated,
the method's own phases run, the step is evaluated, and metrics, plot and a checkpoint are
written. The trainer only orchestrates: the run's parts (data, method, memory, plug-ins,
evaluator) come from ``run_parts.build_run``, shared with ``sircil eval`` and ``export``; the
fitting loop, evaluation, the base-step cache and the results live in ``training/``; what a
method or plug-in sees of a step is its :class:`StepContext`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .data.datasets import Dataset, load_dataset
from .distributed import SINGLE, Distributed, resolve_device
from .locks import exclusive
from .run_parts import build_run
from .runfolder import LOCK_NAME, RunFolder, RunFolderError, atomic_write_json, provenance, quiet_logger, setup_logger
from .training.base_cache import base_cache_path, cached_base_step
from .training.context import StepContext
from .training.evaluation import peak_memory_mb
from .training.loop import Fitter, resolve_compile
from .training.phase import LossFn, Phase, Step, derive_seed, main_phase
from .training.progress import Progress
from .training.run_log import RunLog


class Trainer:
    def __init__(self, cfg: Config, folder: RunFolder, log: logging.Logger, dist: Distributed = SINGLE, dataset: Dataset | None = None):
        self.cfg, self.folder, self.log, self.dist = cfg, folder, log, dist
        self.device = dist.device(resolve_device(cfg.train.device))
        self.compile_mode = resolve_compile(cfg.train.compile, self.device, dist.world)
        self.parts = parts = build_run(cfg, self.device, dataset)
        self.method, self.memory, self.plugins = parts.method, parts.memory, parts.plugins
        # training reads the whole training split on the device, and every step evaluates on the test split
        self.train_split, self.test_split = parts.train.whole(), parts.test.whole()
        self.progress = Progress(self.method.has_nme)
        self.run_log = RunLog(folder, log, cfg, dist.is_main)
        tc = cfg.train
        self.fitter = Fitter(
            self.method, tc, cfg.seed, cfg.hash(), self.device, dist, self.train_split, parts.augment, log,
            self.compile_mode, tc.compile == "auto", folder.save_partial, self.run_log.epoch,
        )

    def run(self) -> dict[str, Any]:
        first = self._resume()
        self.log.info(
            "%s on %s: %d train / %d test images on %s, steps of %s classes, order %s...",
            self.cfg.method.name, self.parts.spec.name, len(self.train_split), len(self.test_split), self.device,
            list(self.parts.scenario.increments), self.parts.class_order[:10],
        )
        for t in range(first, self.parts.scenario.num_steps):
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
        return self.parts.context(step, indices, self.folder.path, self.log, self.dist.is_main, lambda phase: self.fitter.fit(phase, step))

    def begin_step(self, t: int) -> tuple[Step, StepContext]:
        """The step's training set and context; the plug-ins measure it on the previous step's model,
        then the method grows its model and prepares it."""
        step = self.parts.step(t)
        new_idx, mem_idx = self.parts.step_data(step)
        self.log.info(
            "step %d/%d: classes %d-%d new (%s), %d new images + %d exemplars of %d old classes",
            t, self.parts.scenario.num_steps - 1, step.start, step.end - 1,
            ", ".join(self.parts.class_names[step.start: step.end][:5]) + ("..." if step.num_new > 5 else ""),
            new_idx.numel(), mem_idx.numel(), step.num_old,
        )
        return step, self.prepare(step, torch.cat([new_idx, mem_idx]))

    def prepare(self, step: Step, indices: torch.Tensor) -> StepContext:
        ctx = self.context(step, indices)
        self.parts.begin_plugins(ctx)
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
        record, row, row_nme = self.dist.from_main(lambda: self.parts.evaluate(step))
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
            self.folder.write_plot(metrics, f"{self.run_label()} on {self.parts.spec.name}, memory {self.memory_label()}")
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
        withheld = self.parts.withheld
        if withheld.any():  # the base step trains without them (BiC's pool, sized by the memory): share it only at as many
            key["withheld"] = int(withheld.sum())
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
        labels, withheld = self.train_split.labels, self.parts.withheld
        per_class = {k: torch.nonzero((labels == k) & ~withheld).flatten() for k in range(step.start, step.end)}
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, "memory", step.index))

        def select() -> dict:
            self.memory.add_classes(per_class, self.parts.evaluator.embed_indices, generator)
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
        header = {"method": self.cfg.method.name, "dataset": self.parts.spec.name, "config_hash": self.cfg.hash()}
        return self.progress.metrics(header, self.parts.class_order, finished)

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
        t = self.parts.restore(state)
        self.progress.restore(state, t)
        self.log.info("resuming after step %d from %s", t, self.folder.checkpoint_path(t))
        return t + 1


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
