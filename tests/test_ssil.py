"""SS-IL: separated softmax and task-wise distillation against the official formulas, each task's learning rate, ratio-preserving batches, a tiny real run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sircil.config import load_config
from sircil.data.datasets import DatasetSpec
from sircil.distributed import SINGLE
from sircil.methods.ssil import SSIL, separated_softmax_loss, task_wise_distillation
from sircil.trainer import run_experiment
from sircil.training.loop import Fitter
from sircil.training.phase import Phase, Step

from conftest import epoch_losses, fashion_config, make_config, two_step_config


def test_separated_softmax_is_the_official_split_of_the_batch():
    """Official trainer/ssil.py: CE(sum) of the B new samples on logits[:, mid:end] with target % (end - mid),
    plus CE(sum) of the R replayed ones on logits[:, :mid], divided by B + R."""
    torch.manual_seed(0)
    logits = torch.randn(7, 6)
    y = torch.tensor([4, 5, 4, 5, 4, 0, 3])  # 5 new (classes 4, 5), 2 replayed
    mid, end, b = 4, 6, 5
    curr = F.cross_entropy(logits[:b, mid:end], y[:b] % (end - mid), reduction="sum")
    prev = F.cross_entropy(logits[b:, :mid], y[b:], reduction="sum")
    torch.testing.assert_close(separated_softmax_loss(logits, y, mid), (curr + prev) / 7)
    shuffled = torch.randperm(7)  # where a sample sits in the batch does not matter, its label does
    torch.testing.assert_close(separated_softmax_loss(logits[shuffled], y[shuffled], mid), (curr + prev) / 7)
    torch.testing.assert_close(separated_softmax_loss(logits, y, 0), F.cross_entropy(logits, y))  # base task


def test_task_wise_distillation_by_hand():
    new = torch.tensor([[1.0, 0.0, 2.0, -1.0, 0.5]])
    old = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    t = 2.0
    expected = 0.0
    for s, e in ((0, 2), (2, 4)):
        p = np.exp(old[0, s:e].numpy() / t)
        p /= p.sum()
        q = np.exp(new[0, s:e].numpy() / t)
        q /= q.sum()
        expected += t * t * float((p * np.log(p / q)).sum())
    torch.testing.assert_close(task_wise_distillation(new, old, [(0, 2), (2, 4)], t), torch.tensor(expected, dtype=torch.float32))


def test_each_task_starts_at_its_official_lr_unless_switched_off():
    """Official main.py l. 59-61: task t at lr / (t + 1), the base task (t = 0) at lr itself;
    ``divide_lr_by_task: false`` keeps lr in every step (tests/test_schedules.py checks the CIFAR-100 configs)."""
    spec = DatasetSpec("tiny", 10, 1, 28, None, None, False, (), "")
    phase = Phase("train", torch.arange(4), epochs=1, lr=0.6, loss_fn=None, param_groups=[])
    for divide, expected in ((True, [0.6, 0.3, 0.2, 0.15]), (False, [0.6] * 4)):
        ssil = SSIL(make_config(fashion_config(method={"name": "ssil", "divide_lr_by_task": divide})), spec)
        lrs = [ssil.main_phase(phase, Step(t, 2 * t, 2 * t + 2)).lr for t in range(4)]
        assert lrs == pytest.approx(expected), divide
    assert phase.lr == 0.6  # the trainer's phase is replaced, not changed


def test_every_batch_gets_its_replayed_exemplars(fashion_root, tmp_path):
    cfg = load_config(None, [f"data.root={fashion_root}", "data.train_per_class=20", "train.device=cpu", "train.batch_size=8"])
    from sircil.data.datasets import load_dataset

    split = load_dataset(cfg.data).train
    seen = []
    fitter = Fitter(
        method=type("M", (), {"model": torch.nn.Linear(1, 1), "state_dict": lambda self: {}})(), train=cfg.train, seed=0,
        config_hash="", device=torch.device("cpu"), dist=SINGLE, split=split,
        augment=lambda images, generator, shard: images.float(), log=logging.getLogger("test"),
        compile_mode="off", compile_fallback=False, save_partial=lambda *a: None,
    )
    new, replay = torch.arange(40, 80), torch.tensor([0, 21])  # 40 new images, 2 exemplars
    weight = fitter.method.model.weight

    def loss_fn(x, y):
        seen.append(y.clone())
        return {"loss": (weight * 0).sum() + x.mean() * 0}, torch.zeros(len(y), 10)

    phase = Phase("train", new, epochs=2, lr=0.1, loss_fn=loss_fn, param_groups=[{"params": [weight]}], replay_indices=replay, replay_batch=3)
    images, _ = fitter.fit(phase, Step(1, 2, 4))
    assert len(seen) == 2 * (40 // 8) and images == 2 * 5 * (8 + 3)
    for y in seen:
        assert len(y) == 11 and set(y[8:].tolist()) <= set(split.labels[replay].tolist())
        assert set(y[:8].tolist()) <= set(split.labels[new].tolist())


@pytest.mark.slow
def test_ssil_end_to_end(fashion_root, tmp_path):
    metrics = run_experiment(make_config(two_step_config({"name": "ssil", "replay_batch": 8})), tmp_path / "run")
    assert metrics["finished"] and metrics["accuracy_matrix"][0][0] > 100 / 6 + 10
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "task_kd" in log and "separated_ce" in log
    losses = epoch_losses(log)
    assert all(len(v) == 3 for v in losses.values())
    # step 1: the 120 new images in 3 batches of 32, each with 8 exemplars of the 6 old classes
    assert metrics["per_step"][1]["train_images"] == 120 + 30


def test_a_lone_new_class_gets_no_gradient_and_the_run_says_so(fashion_root, tmp_path):
    """With one new class the separated softmax over the new classes is one logit: its cross-entropy
    is 0 whatever the logits, so SS-IL cannot learn that class (the official code alike); a run warns."""
    logits = torch.randn(4, 7, requires_grad=True)
    loss = separated_softmax_loss(logits, torch.full((4,), 6), num_old=6)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0

    raw = fashion_config(method={"name": "ssil", "replay_batch": 4}, data={"train_per_class": 16, "test_per_class": 8},
                         scenario={"base_classes": 8, "steps": 2}, memory={"per_class": 2}, model={"backbone": "resnet20"},
                         train={"epochs": 1, "batch_size": 16})
    run_experiment(make_config(raw), tmp_path / "run")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("SS-IL on a step of one new class") == 2  # steps 1 and 2, not the base step
