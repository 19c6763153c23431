"""The fitting loop: epochs of batches of one phase.

Data stays on the training device as uint8 tensors and is augmented in batches there; the
losses are accumulated on the device and read once per epoch, so the inner loop never waits
on the host. Every batch has the same shape (an epoch's last partial batch is dropped), so the
step can run compiled or as CUDA graphs (``train.compile``) and compiles once per phase. Under
``torchrun`` each process trains on its share of every batch (``distributed.py``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from ..config_sections import TrainConfig
from ..data.augment import BatchAugment
from ..data.datasets import ImageSplit
from ..distributed import Distributed
from .phase import LossFn, Phase, Step, autocast, derive_seed


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def resolve_compile(mode: str, device: torch.device, processes: int = 1) -> str:
    """``auto``: CUDA graphs through ``reduce-overhead`` on CUDA, where a small network at the
    recipes' batch size is bound by kernel launches; eager elsewhere, where compiling gains
    little (about 8% on a 2-core CPU) for a minute of compilation per phase. Under DDP
    ``auto`` stays eager: compiled DDP (graphs split at gradient buckets, CUDA graphs around
    collectives) has not been verified on GPUs here, so it is opt-in."""
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" and processes == 1 else "off"
    return mode


class TrainStep(nn.Module):
    """A phase's loss as a module: the unit that DistributedDataParallel and torch.compile wrap.
    ``model`` is registered so that DDP sees the parameters the loss trains."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.loss_fn(x, y)


class Trainable(Protocol):
    model: nn.Module

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


Runner = Callable[[torch.Tensor, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


@dataclass
class Fitter:
    """Runs phases on ``method.model``. ``save_partial(step, state)`` keeps a mid-step checkpoint."""

    method: Trainable
    train: TrainConfig
    seed: int
    config_hash: str
    device: torch.device
    dist: Distributed
    split: ImageSplit
    augment: BatchAugment
    log: logging.Logger
    compile_mode: str
    compile_fallback: bool
    save_partial: Callable[[int, dict[str, Any]], None]
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # each epoch's record (metrics.jsonl, TensorBoard)

    def fit(self, phase: Phase, step: Step, checkpoints: bool = False, resume: dict[str, Any] | None = None) -> tuple[int, float]:
        """Run a phase; returns (images trained on, seconds spent). With ``checkpoints``, the
        state is saved every ``train.checkpoint_every`` epochs; ``resume`` continues from one."""
        optimizer = phase.build_optimizer(self.device)
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, phase.name, step.index))
        runner = self.step_runner(phase)
        seen, seconds, first_epoch = 0, 0.0, 0
        if resume is not None:
            self.method.load_state_dict(resume["method_state"])
            optimizer.load_state_dict(resume["optimizer"])
            generator.set_state(resume["generator"])
            first_epoch = resume["epoch"]
            self.log.info("step %d %s: resuming at epoch %d/%d", step.index, phase.name, first_epoch + 1, phase.epochs)
        every = self.train.checkpoint_every if checkpoints else 0
        for epoch in range(first_epoch, phase.epochs):
            images, elapsed = self.epoch(phase, step, epoch, optimizer, generator, runner)
            seen, seconds = seen + images, seconds + elapsed
            if every and (epoch + 1) % every == 0 and epoch + 1 < phase.epochs and self.dist.is_main:
                self.save_partial(step.index, {
                    "step": step.index, "phase": phase.name, "epoch": epoch + 1, "config_hash": self.config_hash,
                    "method_state": self.method.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                })
        self.dist.sync_module(self.method.model)
        return seen, seconds

    def epoch(self, phase: Phase, step: Step, epoch: int, optimizer: torch.optim.Optimizer, generator: torch.Generator, runner: Runner) -> tuple[int, float]:
        """One epoch; returns (images trained on, seconds)."""
        if phase.on_epoch_start is not None:
            phase.on_epoch_start(epoch)
        lr = phase.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        (phase.train_mode or self.method.model.train)()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        n = int(phase.indices.numel())
        batch = self.global_batch(n, phase, step)
        batches = n // batch  # drop the last partial batch: every step has the same shape
        shard = (self.dist.rank, self.dist.world)
        start = time.perf_counter()
        perm = torch.randperm(n, generator=generator, device=self.device)
        replay = self.replay_batches(phase, batches, generator)
        sums = torch.zeros((), device=self.device)
        terms_sum: torch.Tensor | None = None
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        # Each batch's loss and terms stay on the device (one copy per batch), never read per batch:
        # that would make a GPU wait for the host at every batch. They are read only when the
        # epoch's totals, read once below anyway, are not finite, to name the first bad batch. The
        # rest of that epoch trains in vain, but the run stops before anything of it is saved.
        rows: torch.Tensor | None = None
        interactive = sys.stderr.isatty() and self.dist.is_main
        bar = tqdm(range(batches), desc=f"step {step.index} {phase.name} {epoch + 1}/{phase.epochs}", leave=False, disable=not interactive)
        for b in bar:
            idx = phase.indices[perm[b * batch: (b + 1) * batch]]
            x, y = self.batch(phase, idx if replay is None else torch.cat([idx, replay[b]]), generator, shard)
            if self.compile_mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            with autocast(self.train.precision, self.device):
                terms, logits = runner(x, y)
            loss = torch.stack([v.float() for v in terms.values()]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if phase.grad_clip_value is not None:
                torch.nn.utils.clip_grad_value_(params, phase.grad_clip_value)
            optimizer.step()
            if phase.after_update is not None:
                phase.after_update()
            sums = sums + loss.detach()
            stacked = torch.stack([v.detach().float() for v in terms.values()])
            terms_sum = stacked if terms_sum is None else terms_sum + stacked
            correct = correct + (logits.detach().argmax(1) == y).sum()
            row = torch.cat([loss.detach().view(1), stacked])
            rows = row.new_empty((batches, row.numel())) if rows is None else rows
            rows[b] = row
        assert terms_sum is not None and rows is not None, "an epoch has at least one batch (global_batch checks it)"
        # the last update can leave non-finite weights behind finite losses: never checkpoint those
        weights_finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
        # the epoch's only host synchronization (and, across ranks, its only collective)
        totals = self.dist.sum(torch.cat([sums.view(1), terms_sum, correct.view(1).float(), weights_finite.view(1).float()])).tolist()
        values = [v / (batches * self.dist.world) for v in totals[:-2]]
        if not all(math.isfinite(v) for v in values) or totals[-1] != self.dist.world:
            raise self.non_finite(phase, step, epoch, list(terms), values, rows.tolist())
        images = batches * (batch + (0 if replay is None else replay.shape[1]))
        elapsed = time.perf_counter() - start
        self.report_epoch(phase, step, epoch, list(terms), values, 100.0 * totals[-2] / images, lr, images, elapsed)
        return images, elapsed

    @staticmethod
    def non_finite(phase: Phase, step: Step, epoch: int, terms: list[str], means: list[float], rows: list[list[float]]) -> TrainingError:
        """The error of an epoch whose loss or weights went non-finite: where (the first bad batch of
        this process, from ``rows``: each batch's loss, then its terms), and every loss term's value."""
        where = f"step {step.index}, phase {phase.name}, epoch {epoch + 1}/{phase.epochs}"
        bad = [b for b, row in enumerate(rows) if not math.isfinite(row[0])]
        if bad:
            what = f"non-finite loss at {where}, batch {bad[0] + 1}/{len(rows)}: {_terms(terms, rows[bad[0]])}"
        elif all(math.isfinite(v) for v in means):
            what = f"non-finite weights after {where} (its losses stayed finite, epoch means {_terms(terms, means)})"
        else:  # under torchrun, a batch of another process
            what = f"non-finite loss at {where}, on another process: epoch means {_terms(terms, means)}"
        if step.index:
            kept = f"the checkpoint of step {step.index - 1} is kept (and the step's last mid-step one, if any)"
        else:
            kept = "the step's last mid-step checkpoint, if any, is kept"
        return TrainingError(
            f"{what}. Training stopped before saving anything of this epoch: {kept}; rerunning the same command "
            "resumes from there. Usual causes: too high a learning rate (train.lr, train.base_lr), bf16 overflow "
            "(train.precision=fp32), or bad data; a run with a changed config needs another --out folder or --overwrite."
        )

    def batch(self, phase: Phase, idx: torch.Tensor, generator: torch.Generator, shard: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of a batch of training-set positions, as augmented images and labels;
        a phase's companions (DDE's neighbours) ride along after the batch's own images."""
        idx = self.dist.shard(idx)
        y = self.split.labels[idx]
        if phase.companions is not None:
            idx = torch.cat([idx, phase.companions(idx)])
        images = self.split.images[idx]
        x = self.augment(images, generator, shard) if phase.augment else self.augment.normalizer.eval_view(images)
        if self.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def report_epoch(self, phase: Phase, step: Step, epoch: int, terms: list[str], values: list[float], accuracy: float, lr: float,
                     images: int, elapsed: float) -> None:
        """``values``: the mean total loss, then each term's."""
        if self.on_epoch is not None and self.dist.is_main:
            self.on_epoch({
                "step": step.index, "phase": phase.name, "epoch": epoch + 1, "epochs": phase.epochs, "loss": values[0],
                **dict(zip(terms, values[1:])), "accuracy": accuracy, "lr": lr, "images_per_second": images / max(elapsed, 1e-9),
                "seconds": elapsed,
            })
        parts = " ".join(f"{k} {v:.4f}" for k, v in zip(terms, values[1:]))
        self.log.info(
            "step %d %s epoch %d/%d: loss %.4f (%s) acc %.1f lr %.4g %.0f img/s",
            step.index, phase.name, epoch + 1, phase.epochs, values[0], parts, accuracy, lr, images / max(elapsed, 1e-9),
        )

    def replay_batches(self, phase: Phase, batches: int, generator: torch.Generator) -> torch.Tensor | None:
        """``batches`` rows of ``phase.replay_batch`` replay indices: a shuffle of the replay pool
        repeated as often as the epoch needs, so each sample comes about equally often."""
        pool = phase.replay_indices
        if pool is None or pool.numel() == 0 or phase.replay_batch == 0:
            return None
        need = batches * phase.replay_batch
        copies = -(-need // pool.numel())
        order = torch.randperm(copies * pool.numel(), generator=generator, device=self.device)[:need] % pool.numel()
        return pool[order].view(batches, phase.replay_batch)

    def global_batch(self, n: int, phase: Phase, step: Step) -> int:
        """The batch size over all ranks: train.batch_size, or all ``n`` samples when fewer,
        rounded down to a multiple of the number of processes so each gets an equal share."""
        batch = min(self.train.batch_size, n)
        batch -= batch % self.dist.world
        if batch == 0:
            raise TrainingError(
                f"step {step.index} {phase.name}: {n} training samples cannot be split over {self.dist.world} processes; "
                "use fewer processes or more data"
            )
        return batch

    def step_runner(self, phase: Phase) -> Runner:
        """The phase's loss, under DDP with several processes, compiled per ``train.compile``.

        Each phase compiles afresh (its loss closes over a new step and classifier width):
        the caches are reset first, so a ten-step run never reaches dynamo's recompilation
        limit and silently falls back to eager. With ``compile: auto`` a step that fails to
        compile on its first batch runs eager instead, with a warning."""
        eager = self.dist.wrap(TrainStep(self.method.model, phase.loss_fn))
        if self.compile_mode == "off":
            return eager
        torch.compiler.reset()
        compiled = torch.compile(eager, mode=None if self.compile_mode == "default" else self.compile_mode, dynamic=False)
        if not self.compile_fallback:
            return compiled
        state: dict[str, Any] = {"runner": compiled, "tried": False}

        def run(x: torch.Tensor, y: torch.Tensor):
            if state["tried"]:
                return state["runner"](x, y)
            state["tried"] = True
            try:
                return compiled(x, y)
            except Exception as exc:  # noqa: BLE001  (compiler failures have no common type)
                self.log.warning("phase %s: torch.compile (%s) failed (%s: %s); training it eager", phase.name, self.compile_mode, type(exc).__name__, exc)
                state["runner"] = eager
                return eager(x, y)

        return run


def _terms(names: list[str], values: list[float]) -> str:
    """``values``: the total loss, then each named term's."""
    return ", ".join(f"{name} {value:.4g}" for name, value in zip(["loss", *names], values))
