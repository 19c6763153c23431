"""Every CIFAR-100 recipe's schedule against its official code: epochs, learning rate, scheduler,
milestones, decay, momentum and weight decay of the base step's and an increment's main phase,
and of the method's own phases (PODNet's classifier finetuning, DER's balanced re-training, BiC's
stage 2), resolved by the method and the trainer's own composition without training anything.

The expected values are literals read from the official files cited beside them, never taken
from sircil's configs, so a config that drifts from its recipe fails here: SS-IL's increments
trained at lr 0.1 where the official main.py divides it by the task's number.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import step_context
from sircil.config import load_config, milestone_epochs
from sircil.data.datasets import dataset_spec
from sircil.data.scenario import Scenario
from sircil.methods import method_class
from sircil.trainer import Trainer
from sircil.training.phase import Phase, Step

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
STEPS = (5, 10)
IMAGES_PER_CLASS = 12  # enough for PODNet's 10 k-means proxies and DDE's 10 neighbours
MEMORY_PER_CLASS = 2


@dataclass(frozen=True)
class Schedule:
    """What an official recipe fixes of a phase's optimization."""

    epochs: int
    lr: float
    milestones: tuple[int, ...]
    lr_decay: float | None  # None: no step decay (cosine or constant)
    weight_decay: float
    scheduler: str = "step"
    momentum: float = 0.9
    warmup_epochs: int = 0


def schedule_of(phase: Phase) -> Schedule:
    """A phase's schedule, milestones as epochs; lr to 4 decimals, as SS-IL's official trainer prints it
    (``trainer/trainer_factory.py`` l. 110, "Setting LR to %0.4f"), exact for every other recipe here."""
    step_decay = phase.scheduler == "step"
    return Schedule(
        epochs=phase.epochs, lr=round(phase.lr, 4),
        milestones=tuple(milestone_epochs(phase.milestones, phase.epochs - phase.warmup_epochs)) if step_decay else (),
        lr_decay=phase.lr_decay if step_decay else None, weight_decay=phase.weight_decay, scheduler=phase.scheduler,
        momentum=phase.momentum, warmup_epochs=phase.warmup_epochs,
    )


# No official code: iCaRL's epochs and drops (srebuffi/iCaRL main_cifar_100_theano.py l. 22-25)
# with the lr 0.1 / weight decay 5e-4 of cross-entropy training (docs/methods.md, finetune).
FINETUNE = Schedule(70, 0.1, (49, 63), 0.2, 5e-4)
# srebuffi/iCaRL iCaRL-TheanoLasagne/main_cifar_100_theano.py l. 22-26: 70 epochs, lr 2.0 divided
# by 5 after epochs 49 and 63 (l. 199-202, "(epoch+1) in lr_strat" at the epoch's end), l2 1e-5 on
# sum(w^2) (l. 69), whose gradient is weight decay 2e-5; momentum 0.9 (l. 76).
ICARL = Schedule(70, 2.0, (49, 63), 0.2, 2e-5)
# hshustc/CVPR19_Incremental_Learning cifar100-class-incremental/class_incremental_cosine_cifar100.py
# l. 50 (--epochs 160), l. 98-102 (lr 0.1, [80, 120], x0.1, wd 5e-4, momentum 0.9), l. 338-339
# (the same SGD and MultiStepLR for every step, the first included).
UCIR = Schedule(160, 0.1, (80, 120), 0.1, 5e-4)
# JoyHuYY1412/DDE_CIL cifar100-class-incremental/class_incremental_cosine_cifar100.py l. 55 and
# l. 108-112, 362-363: UCIR's schedule unchanged.
DDE = UCIR
# arthurdouillard/incremental_learning.pytorch options/podnet/podnet_cnn_cifar100.yaml l. 40-48:
# cosine over 160 epochs, lr 0.1, wd 5e-4; SGD momentum 0.9 (inclearn/lib/factory.py l. 20).
# factory.py l. 162 CosineAnnealingLR, stepped with the finished epoch (see official_podnet_lrs)
PODNET = Schedule(160, 0.1, (), None, 5e-4, scheduler="cosine_lagged")
# same yaml l. 32-37: finetuning 20 epochs at lr 0.05 after each increment; inclearn/models/podnet.py
# l. 178: no scheduler (constant lr), the weight decay of the main training.
PODNET_FINETUNE = Schedule(20, 0.05, (), None, 5e-4, scheduler="constant")
# Rhyssiyan/DER-ClassIL.pytorch exps/der_womask/cifar100/b50/10steps/configs/1.yaml l. 72-80
# (pretrain: the base step, 200 epochs, x0.1 at 60/120/160, wd 5e-4, momentum 0.9 in
# inclearn/learn/pretrain.py), l. 33-46 (increments: 170 epochs, lr 0.1, 10 warmup epochs, then
# x0.1 at 100 and 120 counted after the warmup), l. 61-70 (decouple: 30 epochs, lr 0.1, x0.1 at 15).
DER_BASE = Schedule(200, 0.1, (60, 120, 160), 0.1, 5e-4)
DER = Schedule(170, 0.1, (100, 120), 0.1, 5e-4, warmup_epochs=10)
DER_BALANCED = Schedule(30, 0.1, (15,), 0.1, 5e-4)
# G-U-N/PyCIL models/wa.py l. 16-28 (87cc411): base 200 epochs, lr 0.1, x0.1 at 60/120/170, wd 5e-4;
# increments 170 epochs, x0.1 at 60/100/140, wd 2e-4; SGD momentum 0.9 (l. 86-105).
WA_BASE = Schedule(200, 0.1, (60, 120, 170), 0.1, 5e-4)
WA = Schedule(170, 0.1, (60, 100, 140), 0.1, 2e-4)
# G-U-N/PyCIL models/bic.py l. 12-19 (87cc411): every step 170 epochs, lr 0.1, x0.1 at 60/100/140,
# wd 2e-4, momentum 0.9; stage 2 (l. 177-200) the same schedule. Stage 2's weight decay is the
# official code's (wuyuebupt/LargeScaleIncrementalLearning resnet.py l. 636-637: cross-entropy
# plus 0.1 * l2_loss of the bias layer alone), not PyCIL's 2e-4.
BIC = Schedule(170, 0.1, (60, 100, 140), 0.1, 2e-4)
BIC_STAGE2 = Schedule(170, 0.1, (60, 100, 140), 0.1, 0.0)
# hongjoon0805/SS-IL-Official arguments.py l. 14-27 (schedule [40, 80], gammas 0.1, momentum 0.9,
# decay 1e-4, 100 epochs) with README.md's SS-IL command (--factor 1: main.py l. 62-64 leave the
# epochs and milestones of every task alone); the lr is the task's, below.
SSIL = Schedule(100, 0.1, (40, 80), 0.1, 1e-4)
# main.py l. 59-61: task t starts at args.lr / (t + 1), lr 0.1 (arguments.py l. 9), the base task
# being t = 0; as the official trainer prints them (trainer_factory.py l. 110, "%0.4f").
SSIL_LR = {
    5: (0.1, 0.05, 0.0333, 0.025, 0.02, 0.0167),
    10: (0.1, 0.05, 0.0333, 0.025, 0.02, 0.0167, 0.0143, 0.0125, 0.0111, 0.01, 0.0091),
}

# method: (base step's main phase, an increment's main phase, an increment's own phases)
OFFICIAL: dict[str, tuple[Schedule, Schedule, dict[str, Schedule]]] = {
    "finetune": (FINETUNE, FINETUNE, {}),
    "icarl": (ICARL, ICARL, {}),
    "ucir": (UCIR, UCIR, {}),
    "dde": (DDE, DDE, {}),
    "podnet": (PODNET, PODNET, {"finetune": PODNET_FINETUNE}),
    "der": (DER_BASE, DER, {"balanced": DER_BALANCED}),
    "wa": (WA_BASE, WA, {}),
    "bic": (BIC, BIC, {"bias": BIC_STAGE2}),
    "ssil": (SSIL, SSIL, {}),
}
CASES = [(name, steps) for name in OFFICIAL for steps in STEPS]


def training_split() -> torch.Tensor:
    """Labels of a stand-in CIFAR-100 training split: a few images of every class."""
    return torch.arange(dataset_spec("cifar100").num_classes).repeat_interleave(IMAGES_PER_CLASS)


def step_indices(labels: torch.Tensor, withheld: torch.Tensor, step: Step) -> torch.Tensor:
    """The step's training set as the trainer makes it: the new classes' images the method does not
    withhold, then a memory of the first unwithheld images of every old class."""
    usable = ~withheld
    new = torch.nonzero((labels >= step.start) & (labels < step.end) & usable).flatten()
    memory = [torch.nonzero((labels == k) & usable).flatten()[:MEMORY_PER_CLASS] for k in range(step.start)]
    return torch.cat([new, *memory])


def resolve(config: str, t: int) -> dict[str, Phase]:
    """The phases step ``t`` of ``config`` would train ("train" and the method's own), built by the
    method and ``Trainer.main_phase`` after the calls the trainer makes before them; nothing runs."""
    cfg = load_config(CONFIGS / config)
    spec = dataset_spec(cfg.data.dataset)
    scenario = Scenario.from_config(cfg.scenario, spec.num_classes)
    torch.manual_seed(0)
    method = method_class(cfg.method.name)(cfg, spec)
    labels = training_split()
    withheld = method.withheld(labels)
    for s in range(t + 1):
        method.expand(Step(s, scenario.start(s), scenario.end(s)))
    step = Step(t, scenario.start(t), scenario.end(t))
    indices = step_indices(labels, withheld, step)
    generator = torch.Generator().manual_seed(0)
    own: list[Phase] = []

    def fit(phase: Phase) -> tuple[int, float]:
        own.append(phase)
        return 0, 0.0

    ctx = step_context(
        step, labels, indices=indices, fit=fit,
        memory_indices=lambda: indices[labels[indices] < step.start],
        embed_indices=lambda idx: F.normalize(torch.randn(idx.numel(), method.feature_dim, generator=generator), dim=1),
    )
    method.begin_step(ctx)
    trainer = SimpleNamespace(cfg=cfg, method=method, main_loss=lambda step: None)
    main = Trainer.main_phase(trainer, step, ctx.indices, "train")
    method.after_step(ctx)
    return {"train": main, **{phase.name: phase for phase in own}}


@pytest.mark.parametrize("name,steps", CASES, ids=[f"{n}-{s}steps" for n, s in CASES])
def test_base_step_and_increment_follow_the_official_schedule(name, steps):
    base, increment, own = OFFICIAL[name]
    config = f"{name}_b50_{steps}steps.yaml"
    first = resolve(config, 0)
    assert schedule_of(first["train"]) == base, f"{config}, base step"
    assert set(first) == {"train"}, f"{config}: the official code runs its own phases after increments only"
    later = resolve(config, 1)
    expected = dataclasses.replace(increment, lr=SSIL_LR[steps][1]) if name == "ssil" else increment
    assert schedule_of(later["train"]) == expected, f"{config}, first increment"
    assert {k: schedule_of(p) for k, p in later.items() if k != "train"} == own, f"{config}, the method's own phases"


@pytest.mark.parametrize("steps", STEPS)
def test_ssil_every_step_starts_at_the_official_lr(steps):
    lrs = tuple(schedule_of(resolve(f"ssil_b50_{steps}steps.yaml", t)["train"]).lr for t in range(steps + 1))
    assert lrs == SSIL_LR[steps]


def official_podnet_lrs(epochs: int, lr: float) -> list[float]:
    """The lr each epoch trains at in PODNet's loop (inclearn/models/icarl.py ``_training_step`` l. 205-248):
    the CosineAnnealingLR of factory.py l. 162, stepped with the finished epoch's index after it."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        with warnings.catch_warnings():  # torch deprecates the epoch argument the official code passes
            warnings.simplefilter("ignore")
            scheduler.step(epoch)
    return lrs


@pytest.mark.parametrize("config,epochs,lr", [
    ("podnet_b50_5steps.yaml", 160, 0.1), ("podnet_b50_10steps.yaml", 160, 0.1),
    ("../imagenet_subset/podnet_b50_5steps.yaml", 90, 0.05), ("../imagenet_subset/podnet_b50_10steps.yaml", 90, 0.05),
])
def test_podnet_cosine_per_epoch_is_the_official(config, epochs, lr):
    """Epoch by epoch, the lr PODNet's loop trains at: one epoch behind a plain cosine (``cosine_lagged``)."""
    for t in (0, 1):
        phase = resolve(config, t)["train"]
        official = official_podnet_lrs(epochs, lr)
        assert [round(phase.lr_at(e), 8) for e in range(phase.epochs)] == [round(v, 8) for v in official], (config, t)
