"""The one incremental loop shared by every method.

Per step: expand the model, train on new data + memory, update the memory (herding),
run the method's optional after-step phase, evaluate (CNN and NME), write metrics,
plot and a checkpoint. Data stays on the training device as uint8 tensors and is
augmented in batches there; the losses are accumulated on the device and read once
per epoch, so the inner loop never waits on the host. Every batch has the same shape
(an epoch's last partial batch is dropped), so the step can run compiled or as CUDA
graphs (``train.compile``) and compiles once per phase. Under ``torchrun`` each
process trains on its share of every batch (``distributed.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from tqdm import tqdm

from . import __version__
from .config import Config, non_default
from .data.augment import BatchAugment, Normalizer
from .data.datasets import load_dataset
from .data.memory import Memory
from .data.scenario import Scenario, apply_class_order, resolve_class_order
from .distributed import SINGLE, Distributed
from .evaluate import class_means, embed_images, infer, nme_predict
from .methods import Method, Step, method_class
from .metrics import step_accuracies, summarize, task_accuracies
from .runfolder import LOCK_NAME, RunFolder, RunFolderError, atomic_torch_save, atomic_write_json, claim, exclusive, provenance, setup_logger
from .sir import SIR

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


def derive_seed(seed: int, *tags: Any) -> int:
    """An independent, reproducible seed for each (step, phase, purpose)."""
    digest = hashlib.sha256(repr((seed,) + tags).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunFolderError(f"train.device={name} but CUDA is not available here; use --set train.device=cpu or auto")
    return device


@dataclass
class Phase:
    """One optimization phase: which samples, how long, which schedule, which loss."""

    name: str
    indices: torch.Tensor
    epochs: int
    lr: float
    loss_fn: LossFn
    param_groups: list[dict[str, Any]]
    scheduler: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip_value: float | None = None
    # Puts the model in its training state each epoch (default: model.train()); a phase that
    # trains only a classifier keeps the backbone's BatchNorm statistics fixed with it.
    train_mode: Callable[[], None] | None = None
    # Linear warmup from lr / warmup_epochs to lr; the schedule (and its milestones) then
    # counts epochs from the end of the warmup, as DER's GradualWarmupScheduler does.
    warmup_epochs: int = 0
    # Called with the epoch index before each epoch (e.g. DER resets its classifiers when warmup ends).
    on_epoch_start: Callable[[int], None] | None = None

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / self.warmup_epochs
        epoch, epochs = epoch - self.warmup_epochs, self.epochs - self.warmup_epochs
        if self.scheduler == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        if self.scheduler == "step":
            return self.lr * self.lr_decay ** sum(epoch >= m for m in self.milestones)
        return self.lr


class Trainer:
    def __init__(self, cfg: Config, folder: RunFolder, log: logging.Logger, dist: Distributed = SINGLE):
        self.cfg, self.folder, self.log, self.dist = cfg, folder, log, dist
        self.device = dist.device(resolve_device(cfg.train.device))
        self.compile_mode = resolve_compile(cfg.train.compile, self.device, dist.world)
        self.compile_fallback = cfg.train.compile == "auto"
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        dataset = load_dataset(cfg.data)
        self.spec = dataset.spec
        self.class_order = resolve_class_order(cfg.data, self.spec.num_classes)
        dataset = apply_class_order(dataset, self.class_order)
        self.class_names = dataset.class_names
        self.train_split = dataset.train.to(self.device)
        self.test_split = dataset.test.to(self.device)
        self.scenario = Scenario.from_config(cfg.scenario, self.spec.num_classes)
        self.channels_last = cfg.train.channels_last
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        self.method: Method = method_class(cfg.method.name)(cfg, self.spec)
        self.method.model.to(self.device)
        if self.channels_last:
            self.method.model.to(memory_format=torch.channels_last)
        self.memory = Memory(cfg.memory)
        self.normalizer = Normalizer.from_config(cfg.data, self.spec, self.train_split.images)
        self.augment = BatchAugment(cfg.data, self.spec, self.normalizer)
        self.sir = SIR(cfg.sir) if cfg.sir.enabled else None
        self.class_steps = torch.tensor([self.scenario.step_of_class(k) for k in range(self.spec.num_classes)])
        self.records: list[dict[str, Any]] = []
        self.matrix: list[list[float]] = []
        self.matrix_nme: list[list[float]] = []
        self.base_step_cached = False
        self.step_indices = torch.empty(0, dtype=torch.long, device=self.device)  # the current step's training set

    # --- the loop -------------------------------------------------------------------

    def step_info(self, t: int) -> Step:
        return Step(t, self.scenario.start(t), self.scenario.end(t))

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

    def run_step(self, t: int, partial: dict[str, Any] | None = None) -> None:
        """Train, evaluate and checkpoint step ``t``; ``partial`` continues its main phase mid-way."""
        step = self.step_info(t)
        wall = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        labels = self.train_split.labels
        new_idx = torch.nonzero((labels >= step.start) & (labels < step.end)).flatten()
        mem_idx = self.memory.indices().to(self.device)
        indices = torch.cat([new_idx, mem_idx])
        self.step_indices = indices
        self.log.info(
            "step %d/%d: classes %d-%d new (%s), %d new images + %d exemplars of %d old classes",
            t, self.scenario.num_steps - 1, step.start, step.end - 1,
            ", ".join(self.class_names[step.start: step.end][:5]) + ("..." if step.num_new > 5 else ""),
            new_idx.numel(), mem_idx.numel(), step.num_old,
        )
        if self.sir is not None:
            self.begin_sir(step, indices)  # before expand: IT measures the previous step's model as it was
        torch.manual_seed(derive_seed(self.cfg.seed, "expand", t))
        self.method.expand(step)
        self.method.begin_step(step, self)
        base = t == 0
        phase = self.main_phase(step, indices, "train")
        cache = self.base_cache_path(indices) if base else None
        with contextlib.ExitStack() as held:

            def lookup() -> dict[str, Any] | None:  # the claim makes a concurrent run wait for this base step, not retrain it
                if cache is None:
                    return None
                held.enter_context(claim(cache, self.log))
                return torch.load(cache, map_location="cpu", weights_only=False) if cache.is_file() else None

            cached = self.dist.from_main(lookup)
            if cached is not None:
                self.method.load_state_dict(cached)
                self.base_step_cached = True
                images_seen, train_seconds = 0, 0.0
                self.log.info("step 0: trained base model taken from the cache %s", cache)
            else:
                images_seen, train_seconds = self.fit(phase, step, checkpoints=True, resume=partial)
                if cache is not None and self.dist.is_main:
                    atomic_torch_save(cache, self.method.state_dict())
        self.update_memory(step)
        self.method.after_step(step, self)
        record, row, row_nme = self.dist.from_main(lambda: self.evaluate(step))
        self.matrix.append(row)
        if row_nme is not None:
            self.matrix_nme.append(row_nme)
        record.update(
            train_images=int(indices.numel()),
            wall_seconds=round(time.perf_counter() - wall, 3),
            train_images_per_second=round(images_seen / max(train_seconds, 1e-9), 1),
            parameters=sum(p.numel() for p in self.method.model.parameters()),
            peak_memory_mb=round(self.peak_memory_mb(), 1),
        )
        self.records.append(record)
        if self.dist.is_main:
            metrics = self.metrics(finished=False)
            self.folder.save_checkpoint(t, self.checkpoint_state(t))
            self.folder.remove_partial(t)
            self.folder.write_metrics(metrics)
            sir = " + SIR" if self.sir is not None else ""
            self.folder.write_plot(metrics, f"{self.cfg.method.name}{sir} on {self.spec.name}, memory {self.memory_label()}")
        self.log.info(
            "step %d: accuracy %.2f (old %s, new %.2f)%s, %d classes seen",
            t, record["accuracy"], _fmt(record["accuracy_old"]), record["accuracy_new"],
            f", NME {record['accuracy_nme']:.2f}" if record.get("accuracy_nme") is not None else "", step.end,
        )
        if "logit_bias_old_minus_new" in record:
            self.log.info(
                "step %d: mean test logit old %.3f / new %.3f, bias old - new %.3f without SIR's adjustment (inference)%s",
                t, record["mean_logit_old"], record["mean_logit_new"], record["logit_bias_old_minus_new"],
                f", {record['logit_bias_old_minus_new_sir_view']:.3f} with SIR's training adjustment" if self.sir else "",
            )

    def main_phase(self, step: Step, indices: torch.Tensor, name: str) -> Phase:
        """The step's main phase from ``train:`` (the base step's own epochs, lr and milestones
        on step 0), as the method adjusts it."""
        tc = self.cfg.train
        base = step.index == 0
        phase = Phase(
            name=name,
            indices=indices,
            epochs=(tc.base_epochs or tc.epochs) if base else tc.epochs,
            lr=(tc.base_lr or tc.lr) if base else tc.lr,
            loss_fn=self.main_loss(step),
            param_groups=self.method.param_groups(step),
            scheduler=tc.scheduler,
            milestones=(tc.base_milestones if tc.base_milestones is not None else tc.milestones) if base else tc.milestones,
            lr_decay=tc.lr_decay,
            momentum=tc.momentum,
            weight_decay=tc.weight_decay,
            grad_clip_value=tc.grad_clip_value,
        )
        return self.method.main_phase(phase, step)

    def main_loss(self, step: Step) -> LossFn:
        method, sir = self.method, self.sir

        def loss_fn(x: torch.Tensor, y: torch.Tensor):
            out = method.forward(x, step)
            if sir is not None:
                scale = out[method.sir_scale] if method.sir_scale else 1.0
                out[method.sir_logits] = sir.adjust(out[method.sir_logits], y, scale, method.sir_head)
                weights = sir.sample_weights(y) if method.sir_head == "sigmoid" else None
                if weights is not None:
                    out["sample_weight"] = weights
            return method.losses(out, y, step), out[method.sir_logits]

        return loss_fn

    def fit(self, phase: Phase, step: Step, checkpoints: bool = False, resume: dict[str, Any] | None = None) -> tuple[int, float]:
        """Run a phase; returns (images trained on, seconds spent). With ``checkpoints``, the
        state is saved every ``train.checkpoint_every`` epochs; ``resume`` continues from one."""
        model = self.method.model
        optimizer = self.optimizer(phase)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        train_mode = phase.train_mode or model.train
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, phase.name, step.index))
        images, labels = self.train_split.images, self.train_split.labels
        n = int(phase.indices.numel())
        batch = self.global_batch(n, phase, step)
        batches = n // batch  # drop the last partial batch: every step has the same shape
        shard = (self.dist.rank, self.dist.world)
        runner = self.step_runner(phase)
        interactive = sys.stderr.isatty() and self.dist.is_main
        seen, seconds = 0, 0.0
        first_epoch = 0
        if resume is not None:
            self.method.load_state_dict(resume["method_state"])
            optimizer.load_state_dict(resume["optimizer"])
            generator.set_state(resume["generator"])
            first_epoch = resume["epoch"]
            self.log.info("step %d %s: resuming at epoch %d/%d from %s", step.index, phase.name, first_epoch + 1, phase.epochs, self.folder.partial_path(step.index))
        every = self.cfg.train.checkpoint_every if checkpoints else 0
        for epoch in range(first_epoch, phase.epochs):
            if phase.on_epoch_start is not None:
                phase.on_epoch_start(epoch)
            lr = phase.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            train_mode()
            start = time.perf_counter()
            perm = torch.randperm(n, generator=generator, device=self.device)
            sums = torch.zeros((), device=self.device)
            terms_sum: torch.Tensor | None = None
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            bar = tqdm(range(batches), desc=f"step {step.index} {phase.name} {epoch + 1}/{phase.epochs}", leave=False, disable=not interactive)
            for b in bar:
                idx = self.dist.shard(phase.indices[perm[b * batch: (b + 1) * batch]])
                x = self.augment(images[idx], generator, shard)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = labels[idx]
                if self.compile_mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                with self.autocast():
                    terms, logits = runner(x, y)
                loss = torch.stack([v.float() for v in terms.values()]).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if phase.grad_clip_value is not None:
                    torch.nn.utils.clip_grad_value_(params, phase.grad_clip_value)
                optimizer.step()
                sums = sums + loss.detach()
                stacked = torch.stack([v.detach().float() for v in terms.values()])
                terms_sum = stacked if terms_sum is None else terms_sum + stacked
                correct = correct + (logits.detach().argmax(1) == y).sum()
            # the epoch's only host synchronization (and, across ranks, its only collective)
            totals = self.dist.sum(torch.cat([sums.view(1), terms_sum, correct.view(1).float()])).tolist()
            values = [v / (batches * self.dist.world) for v in totals[:-1]]
            accuracy = 100.0 * totals[-1] / (batches * batch)
            elapsed = time.perf_counter() - start
            seen += batches * batch
            seconds += elapsed
            if not all(math.isfinite(v) for v in values):
                raise TrainingError(
                    f"non-finite loss at step {step.index}, phase {phase.name}, epoch {epoch + 1}: "
                    f"{dict(zip(['total', *terms], values))}; the checkpoint of step {step.index - 1} is kept. "
                    "Lower train.lr or check the data."
                )
            parts = " ".join(f"{k} {v:.4f}" for k, v in zip(terms, values[1:]))
            self.log.info(
                "step %d %s epoch %d/%d: loss %.4f (%s) acc %.1f lr %.4g %.0f img/s",
                step.index, phase.name, epoch + 1, phase.epochs, values[0], parts, accuracy, lr, batches * batch / max(elapsed, 1e-9),
            )
            if every and (epoch + 1) % every == 0 and epoch + 1 < phase.epochs and self.dist.is_main:
                self.folder.save_partial(step.index, {
                    "step": step.index, "phase": phase.name, "epoch": epoch + 1, "config_hash": self.cfg.hash(),
                    "method_state": self.method.state_dict(), "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                })
        self.dist.sync_module(model)
        return seen, seconds

    def optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        # fused SGD on CUDA: one kernel for the whole update instead of one per parameter group
        fused = {"fused": True} if self.device.type == "cuda" else {}
        optimizer = torch.optim.SGD(phase.param_groups, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay, **fused)
        for group in optimizer.param_groups:
            group.setdefault("lr_scale", 1.0)
        return optimizer

    def global_batch(self, n: int, phase: Phase, step: Step) -> int:
        """The batch size over all ranks: train.batch_size, or all ``n`` samples when fewer,
        rounded down to a multiple of the number of processes so each gets an equal share."""
        batch = min(self.cfg.train.batch_size, n)
        batch -= batch % self.dist.world
        if batch == 0:
            raise TrainingError(
                f"step {step.index} {phase.name}: {n} training samples cannot be split over {self.dist.world} processes; "
                "use fewer processes or more data"
            )
        return batch

    def step_runner(self, phase: Phase) -> Callable[[torch.Tensor, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]:
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
        state = {"runner": compiled, "tried": False}

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

    def begin_sir(self, step: Step, indices: torch.Tensor) -> None:
        """Rebuild SIR's counts, ages and (with IT) the old model's class similarity for this step."""
        labels = self.train_split.labels[indices]
        embed = lambda: self.embed(self.train_split.images[indices])  # noqa: E731  (the model is still the old one)
        self.sir.begin_step(step.index, step.num_old, step.num_seen, labels, self.class_steps, embed)
        counts = self.sir.counts.tolist()
        self.log.info(
            "SIR: counts %s -> training offsets %s",
            counts[: step.num_seen], [round(v, 3) for v in self.sir.offset.tolist()],
        )
        pairs = self.sir.top_pairs(step.num_old)
        if pairs and self.dist.is_main:
            self.log.info(
                "SIR IT: most similar old/new pairs in the old model: %s",
                ", ".join(f"{self.class_names[a]} ~ {self.class_names[b]} ({v:.2f})" for a, b, v in pairs),
            )
            path = self.folder.path / "sir_similarity.pt"
            saved = torch.load(path, weights_only=False) if path.is_file() else {}
            saved[step.index] = {
                "similarity": self.sir.similarity.cpu(),
                "num_old": step.num_old,
                "class_names": self.class_names[: step.num_seen],
            }
            atomic_torch_save(path, saved)

    def base_cache_path(self, indices: torch.Tensor) -> Path | None:
        """Cache file of the trained base model, keyed by exactly what the base step's training depends on."""
        if self.cfg.cache_dir is None:
            return None
        cfg, tc = self.cfg, self.cfg.train
        counts = torch.bincount(self.train_split.labels[indices]).tolist()
        train = {
            "epochs": tc.base_epochs or tc.epochs, "lr": tc.base_lr or tc.lr,
            "milestones": tc.base_milestones if tc.base_milestones is not None else tc.milestones,
            "batch_size": tc.batch_size, "momentum": tc.momentum, "weight_decay": tc.weight_decay, "scheduler": tc.scheduler,
            "lr_decay": tc.lr_decay, "channels_last": tc.channels_last, "grad_clip_value": tc.grad_clip_value, "precision": tc.precision,
        }
        key = {  # options at their defaults are left out, so that a new option leaves existing keys valid
            "sircil": __version__,
            "seed": cfg.seed,
            "data": non_default(cfg.data),
            "model": non_default(cfg.model),
            "method": {"name": cfg.method.name, **non_default(cfg.method)},
            "base_classes": cfg.scenario.base_classes,
            "train": {k: v for k, v in train.items() if (k, v) not in (("grad_clip_value", None), ("precision", "fp32"))},
            "device": self.device.type,
            # SIR is a no-op on a base step whose classes are equally frequent: only then may runs share it
            "sir": dataclasses.asdict(cfg.sir) if cfg.sir.enabled and len(set(counts)) > 1 else None,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return Path(cfg.cache_dir) / f"base-{cfg.method.name}-{digest}.pt"

    # --- memory and evaluation ------------------------------------------------------

    def embed(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        self.method.model.eval()
        with self.autocast():
            return embed_images(self.method.embed, images, self.cfg.train.eval_batch_size, self.normalizer, self.channels_last, flip)

    def embed_classes(self, classes: range) -> dict[int, torch.Tensor]:
        """L2-normalized features of every training sample of each class, under the current model."""
        labels = self.train_split.labels
        return {k: self.embed(self.train_split.images[labels == k]) for k in classes}

    def update_memory(self, step: Step) -> None:
        labels = self.train_split.labels
        per_class = {k: torch.nonzero(labels == k).flatten() for k in range(step.start, step.end)}
        generator = torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, "memory", step.index))

        def select() -> dict:
            self.memory.add_classes(per_class, lambda idx: self.embed(self.train_split.images[idx]), generator)
            return self.memory.state_dict()

        state = self.dist.from_main(select)  # herding once, on rank 0
        if not self.dist.is_main:
            self.memory.load_state_dict(state)

    def evaluate(self, step: Step) -> tuple[dict[str, Any], list[float], list[float] | None]:
        """The step's record and its rows of the accuracy matrices (CNN, and NME or None)."""
        model = self.method.model
        model.eval()
        mask = self.test_split.labels < step.end
        images, labels = self.test_split.images[mask], self.test_split.labels[mask]
        with self.autocast():
            out = infer(self.method.eval_logits, images, self.cfg.train.eval_batch_size, self.normalizer, self.channels_last)
        bounds = [(self.scenario.start(j), self.scenario.end(j)) for j in range(step.index + 1)]
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
        if step.num_old > 0:
            logits = out["logits"][:, : step.end]
            old, new = self.mean_logits(logits, step.start)
            record.update(mean_logit_old=old, mean_logit_new=new, logit_bias_old_minus_new=old - new)
            if self.sir is not None:
                old, new = self.mean_logits(self.sir.adjust(logits, labels, head=self.method.sir_head), step.start)
                record["logit_bias_old_minus_new_sir_view"] = old - new
        if self.method.has_nme:
            mem = self.memory.indices().to(self.device)
            feats = self.embed(self.train_split.images[mem], flip=self.augment.flip)
            means = class_means(feats, self.train_split.labels[mem], step.end)
            pred_nme = nme_predict(out["features"], means)
            nme = step_accuracies(pred_nme, labels, step.start)
            row_nme = task_accuracies(pred_nme, labels, bounds)
            record.update(accuracy_nme=nme["all"], accuracy_nme_old=nme["old"], accuracy_nme_new=nme["new"])
        counts = self.memory.counts()
        record.update(memory_size=sum(counts.values()), memory_per_class=self.memory.quota(len(counts)))
        return record, row, row_nme

    def peak_memory_mb(self) -> float:
        """This step's peak device memory on CUDA; on CPU the process's peak resident memory so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux

    @staticmethod
    def mean_logits(logits: torch.Tensor, start: int) -> tuple[float, float]:
        """Mean old-class and new-class logit over the test set; their difference is the bias SIR targets."""
        return float(logits[:, :start].mean()), float(logits[:, start:].mean())

    # --- results, checkpoints, resume -----------------------------------------------

    def memory_label(self) -> str:
        m = self.cfg.memory
        return f"{m.per_class}/class" if m.per_class is not None else f"{m.total} total"

    def metrics(self, finished: bool) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "method": self.cfg.method.name,
            "dataset": self.spec.name,
            "config_hash": self.cfg.hash(),
            "finished": finished,
            "base_step_cached": self.base_step_cached,
            "class_order": self.class_order,
            "per_step": self.records,
            "accuracy_matrix": self.matrix,
        }
        metrics.update(summarize([r["accuracy"] for r in self.records], self.matrix))
        if self.method.has_nme:
            metrics["accuracy_matrix_nme"] = self.matrix_nme
            metrics["nme"] = summarize([r["accuracy_nme"] for r in self.records], self.matrix_nme)
        return metrics

    def checkpoint_state(self, t: int) -> dict[str, Any]:
        return {
            "step": t,
            "config_hash": self.cfg.hash(),
            "method": self.cfg.method.name,
            "method_state": self.method.state_dict(),
            "memory": self.memory.state_dict(),
            "records": self.records,
            "matrix": self.matrix,
            "matrix_nme": self.matrix_nme,
            "base_step_cached": self.base_step_cached,
        }

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast around forward passes and losses with ``train.precision=bf16``."""
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

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
        t = state["step"]
        for s in range(t + 1):
            self.method.expand(self.step_info(s))
        self.method.load_state_dict(state["method_state"])
        self.memory.load_state_dict(state["memory"])
        self.records = state["records"][: t + 1]
        self.matrix = state["matrix"][: t + 1]
        self.matrix_nme = state["matrix_nme"][: t + 1]
        self.base_step_cached = state["base_step_cached"]
        self.log.info("resuming after step %d from %s", t, self.folder.checkpoint_path(t))
        return t + 1


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def run_experiment(cfg: Config, out: str | Path, resume: bool = False, overwrite: bool = False, dist: Distributed = SINGLE) -> dict[str, Any]:
    """Run (or resume) ``cfg`` in the run folder ``out``. Under ``torchrun`` every process calls
    this with its ``dist``; rank 0 alone locks, prepares and writes the folder."""
    folder = RunFolder(out)
    threads = torch.get_num_threads()  # train.threads applies to this run only, not to the runs after it in this process
    with contextlib.ExitStack() as held:
        held.callback(torch.set_num_threads, threads)

        def prepare() -> None:
            held.enter_context(exclusive(folder.path / LOCK_NAME.removesuffix(".lock")))  # two processes never write one run folder
            folder.prepare(cfg.to_yaml(), cfg.hash(), overwrite=overwrite, require_existing=resume)

        dist.from_main(prepare)
        log = setup_logger(folder.path / "log.txt") if dist.is_main else quiet_logger(dist.rank)
        try:
            trainer = Trainer(cfg, folder, log, dist)
            if dist.is_main:
                atomic_write_json(folder.path / "provenance.json", {
                    **provenance(cfg.hash(), trainer.device), "compile": trainer.compile_mode, "processes": dist.world,
                })
            return trainer.run()
        finally:
            for handler in list(log.handlers):
                handler.close()
                log.removeHandler(handler)


def quiet_logger(rank: int) -> logging.Logger:
    """Ranks other than 0 log nothing: rank 0 speaks for the run."""
    log = logging.getLogger(f"sircil.rank{rank}")
    log.propagate = False
    log.setLevel(logging.CRITICAL + 1)
    return log
