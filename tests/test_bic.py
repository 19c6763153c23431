"""BiC: the bias-correction layer, the validation split, the loss weights, the old model's
correction and stage 2, against hand values and a tiny real run."""

from __future__ import annotations

import torch

from sircil.data.datasets import dataset_spec
from sircil.methods import Step, method_class
from sircil.methods.base import distillation_loss
from sircil.methods.bic import bias_correction, validation_split
from sircil.runfolder import RunFolder
from sircil.trainer import run_experiment

from conftest import fashion_config, make_config, two_step_config, step_context


def make_bic(**sections):
    cfg = make_config(fashion_config(method={"name": "bic"}, **sections))
    return method_class("bic")(cfg, dataset_spec("fashion_mnist"))


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
