"""BiC: the bias-correction layer, the validation pool and split, the loss weights, the old model's
correction and stage 2, against hand values and tiny real runs."""

from __future__ import annotations

import pytest
import torch

from sircil.config_io import ConfigError
from sircil.data.datasets import dataset_spec
from sircil.methods import Step, method_class
from sircil.methods.base import distillation_loss
from sircil.methods.bic import bias_correction, first_per_class, validation_pool, validation_split
from sircil.runfolder import RunFolder, quiet_logger
from sircil.trainer import Trainer, run_experiment

from conftest import fashion_config, make_config, two_step_config, step_context


def make_bic(validation: str = "split", **sections):
    cfg = make_config(fashion_config(method={"name": "bic", "validation": validation}, **sections))
    return method_class("bic")(cfg, dataset_spec("fashion_mnist"))


def test_validation_must_be_pool_or_split():
    assert make_config(fashion_config(method={"name": "bic"})).method.validation == "pool"
    with pytest.raises(ConfigError, match="method.validation must be one of"):
        make_bic("holdout")


def test_bias_correction_is_eq_4_on_the_new_classes_only():
    logits = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    corrected = torch.tensor([False, False, True, True])
    out = bias_correction(logits, corrected, torch.tensor(0.5), torch.tensor(-1.0))
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, -0.75]]))


def test_validation_split_holds_out_per_class_and_shares_classes_too_small():
    labels = torch.tensor([0] + [1] * 3 + [2] * 10 + [3] * 10)  # class 0 has one exemplar, class 1 three
    indices = torch.arange(len(labels))
    shared = torch.tensor([True, False, False, False])
    train, val = validation_split(indices, labels, 2, torch.Generator().manual_seed(0), shared)
    assert torch.bincount(labels[val], minlength=4).tolist() == [1, 2, 2, 2]
    assert torch.bincount(labels[train], minlength=4).tolist() == [1, 1, 8, 8]
    assert set(train.tolist()) & set(val.tolist()) == {0}  # only the shared exemplar is in both
    again = validation_split(indices, labels, 2, torch.Generator().manual_seed(0), shared)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])


def test_validation_pool_takes_the_same_random_images_of_every_class_for_a_seed():
    labels = torch.tensor([0, 1, 2] * 5)
    pool = validation_pool(labels, 2, torch.Generator().manual_seed(0))
    assert pool.shape == (3, 2) and (labels[pool] == torch.arange(3).unsqueeze(1)).all()
    assert pool.unique().numel() == 6
    assert torch.equal(pool, validation_pool(labels, 2, torch.Generator().manual_seed(0)))
    draws = {tuple(validation_pool(labels, 2, torch.Generator().manual_seed(s)).flatten().tolist()) for s in range(5)}
    assert len(draws) > 1  # random, not the first images of each class
    with pytest.raises(ValueError, match="a class has only 5"):
        validation_pool(labels, 5, torch.Generator())  # nothing of the class would be left to train on


def test_first_per_class_keeps_the_order_given():
    indices = torch.tensor([9, 4, 7, 1, 3, 8])
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0, 1, 0])  # labels[9] = 0, labels[4] = 0, labels[7] = 0, ...
    assert first_per_class(indices, labels, torch.tensor([2, 1])).tolist() == [9, 4, 1]


def test_pool_step_trains_on_the_best_ranked_exemplars_and_validates_on_the_pool():
    method = make_bic("pool", memory={"per_class": 20})
    labels = torch.arange(6).repeat_interleave(40)  # the whole training split: 6 classes of 40
    withheld = method.withheld(labels)
    pool = method.pool
    assert pool.shape == (6, 2) and withheld.sum() == 12 and withheld[pool.flatten()].all()  # 10% of m = 20
    for index in range(3):
        method.expand(Step(index, 2 * index, 2 * index + 2))
    step = Step(2, 4, 6)
    new = torch.nonzero((labels >= 4) & ~withheld).flatten()
    memory = torch.cat([torch.nonzero((labels == k) & ~withheld).flatten().flip(0)[:20] for k in range(4)])  # rank order
    method.begin_step(step_context(step, labels, indices=torch.cat([new, memory])))
    train, val = method.split
    assert torch.equal(val, pool.flatten())
    kept = torch.cat([memory[20 * k: 20 * k + 18] for k in range(4)])  # the 18 best-ranked: m - 2
    assert torch.equal(torch.sort(train).values, torch.sort(torch.cat([new, kept])).values)


def test_losses_weighted_by_the_share_of_old_classes():
    method = make_bic()
    out = {"logits": torch.tensor([[1.0, 0.0, 2.0, 0.5]]), "old_logits": torch.tensor([[0.5, 0.2]])}
    y = torch.tensor([3])
    terms = method.losses(out, y, Step(1, 2, 4))
    torch.testing.assert_close(terms["ce"], 0.5 * torch.nn.functional.cross_entropy(out["logits"], y))
    torch.testing.assert_close(terms["kd"], 0.5 * distillation_loss(out["logits"], out["old_logits"], 2.0))


def test_old_model_distils_with_the_previous_correction_and_the_new_one_starts_as_identity():
    method = make_bic(memory={"per_class": 20})
    model = method.model
    for index in range(2):
        method.expand(Step(index, 2 * index, 2 * index + 2))
    model.correct(2, 4)
    with torch.no_grad():
        model.alpha.fill_(2.0)
        model.beta.fill_(1.0)
    step = Step(2, 4, 6)
    method.expand(step)
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 20 + [3] * 20 + [4] * 100 + [5] * 100)
    method.begin_step(step_context(step, labels))
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    raw = model.head(model.backbone(x))
    torch.testing.assert_close(method.old_model(x)["logits"][:, :4], torch.cat([raw[:, :2], 2 * raw[:, 2:4] + 1], 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(x)["logits"], raw)
    assert model.corrected.tolist() == [False] * 4 + [True] * 2
    train, val = method.split
    assert torch.bincount(labels[val], minlength=6).tolist() == [2] * 6  # 10% of m = 20
    assert train.numel() + val.numel() == len(labels)


def test_stage_2_trains_alpha_and_beta_only_on_unaugmented_validation_images():
    method = make_bic(memory={"per_class": 1})
    for index in range(2):
        method.expand(Step(index, 2 * index, 2 * index + 2))
    step = Step(1, 2, 4)
    labels = torch.tensor([0, 1] + [2] * 50 + [3] * 50)
    phases = []
    ctx = step_context(step, labels, fit=phases.append)
    method.begin_step(ctx)
    train, val = method.split
    assert torch.bincount(labels[val], minlength=4).tolist() == [1, 1, 1, 1]
    assert {0, 1} <= set(train.tolist())  # m = 1: the exemplars train too
    method.after_step(ctx)
    (phase,) = phases
    assert phase.name == "bias" and not phase.augment and phase.weight_decay == 0.0
    assert phase.param_groups[0]["params"] == [method.model.alpha, method.model.beta]
    assert torch.equal(phase.indices, val)


@pytest.mark.slow
def test_bic_end_to_end_corrects_every_increment(fashion_root, tmp_path):
    metrics = run_experiment(make_config(two_step_config({"name": "bic"})), tmp_path / "run")
    assert metrics["finished"] and metrics["accuracy_matrix"][0][0] > 100 / 6 + 10  # the base step learned
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("BiC: new classes' logits corrected as") == 2
    assert "BiC: 8 images held out for bias correction (1 per class)" in log
    for t in (1, 2):
        model = torch.load(RunFolder(tmp_path / "run").checkpoint_path(t), weights_only=False)["method_state"]["model"]
        assert float(model["alpha"]) != 1.0 or float(model["beta"]) != 0.0  # stage 2 moved them
    state = torch.load(RunFolder(tmp_path / "run").checkpoint_path(2), weights_only=False)["method_state"]["model"]
    assert state["corrected"].tolist() == [False] * 8 + [True] * 2


@pytest.mark.slow
def test_pool_images_are_never_trained_on_nor_stored_and_stage_2_fits_on_them(fashion_root, tmp_path, monkeypatch):
    trainer = Trainer(make_config(two_step_config({"name": "bic"})), RunFolder(tmp_path), quiet_logger(0))
    withheld, pool = trainer.parts.withheld, trainer.method.pool
    assert pool.shape == (10, 1) and int(withheld.sum()) == 10  # m = 5: one image of every class
    fit, begin, phases, steps = trainer.fitter.fit, trainer.method.begin_step, [], []

    def record_fit(phase, step, **kwargs):
        phases.append((step, phase.name, phase.indices))
        return fit(phase, step, **kwargs)

    def record_begin(ctx):
        steps.append(ctx.indices)
        begin(ctx)

    monkeypatch.setattr(trainer.fitter, "fit", record_fit)
    monkeypatch.setattr(trainer.method, "begin_step", record_begin)
    trainer.run()
    assert len(steps) == 3 and not any(withheld[indices].any() for indices in steps)
    assert [(s.index, name) for s, name, _ in phases] == [(0, "train"), (1, "train"), (1, "bias"), (2, "train"), (2, "bias")]
    for step, name, indices in phases:
        if name == "train":
            assert not withheld[indices].any()
        else:
            assert torch.equal(indices, pool[: step.num_seen].flatten())
    assert not withheld[trainer.memory.indices()].any() and len(trainer.memory.indices()) == 5 * 10


@pytest.mark.slow
def test_pool_base_step_is_shared_only_at_the_same_pool_size_end_to_end(fashion_root, tmp_path):
    """The pool, sized by the memory, is missing from the base step: m = 2 and 5 (one image per class)
    share a base model, m = 20 (two) trains its own."""
    def run(m: int) -> None:
        raw = fashion_config(
            method={"name": "bic"}, data={"train_per_class": 20, "test_per_class": 5}, scenario={"base_classes": 8, "steps": 1},
            memory={"per_class": m}, train={"epochs": 1, "batch_size": 16, "threads": 1, "checkpoint_every": 0}, cache_dir=str(tmp_path / "cache"),
        )
        run_experiment(make_config(raw), tmp_path / f"m{m}")

    for m in (2, 5, 20):
        run(m)
    assert len(list((tmp_path / "cache").glob("base-*.pt"))) == 2
    assert "taken from the cache" in (tmp_path / "m5" / "log.txt").read_text()
    assert "taken from the cache" not in (tmp_path / "m20" / "log.txt").read_text()
