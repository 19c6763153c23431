"""WA: distillation, loss weights, weight clipping and weight aligning, against hand values and a tiny real run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sircil.methods.wa import WAConfig, align_weights, distillation_loss
from sircil.runfolder import RunFolder
from sircil.trainer import run_experiment

from conftest import fashion_config, make_config, two_step_config


def test_distillation_is_hintons_kd_on_the_old_classes():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    old = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    t = 2.0
    expected = 0.0
    for row, o in zip(logits.numpy(), old.numpy()):
        p = np.exp(o / t) / np.exp(o / t).sum()
        log_q = row[:2] / t - math.log(np.exp(row[:2] / t).sum())  # the new model's old-class columns only
        expected += -(p * log_q).sum() / 2
    torch.testing.assert_close(distillation_loss(logits, old, t), torch.tensor(expected, dtype=torch.float32))


def test_weight_aligning_scales_the_new_rows_to_the_old_mean_norm():
    weight = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 2.0]])  # old norms 5, 1; new 10, 2
    gamma = align_weights(weight, num_old=2)
    assert gamma == 0.5
    torch.testing.assert_close(weight, torch.tensor([[3.0, 4.0], [0.0, 1.0], [3.0, 4.0], [0.0, 1.0]]))


def test_losses_weighted_by_the_share_of_old_classes():
    from sircil.data.datasets import dataset_spec
    from sircil.methods import Step, method_class

    cfg = make_config(fashion_config(method={"name": "wa"}))
    method = method_class("wa")(cfg, dataset_spec("fashion_mnist"))
    out = {"logits": torch.tensor([[1.0, 0.0, 2.0, 0.5]]), "old_logits": torch.tensor([[0.5, 0.2, 0.1]])}
    y = torch.tensor([3])
    terms = method.losses(out, y, Step(1, 3, 4))
    ce = torch.nn.functional.cross_entropy(out["logits"], y)
    torch.testing.assert_close(terms["ce"], 0.25 * ce)
    torch.testing.assert_close(terms["kd"], 0.75 * distillation_loss(out["logits"], out["old_logits"], 2.0))
    method.options = WAConfig(kd_weight=2.0)
    torch.testing.assert_close(method.losses(out, y, Step(1, 3, 4))["kd"], 2 * distillation_loss(out["logits"], out["old_logits"], 2.0))


@pytest.mark.slow
def test_wa_end_to_end_clips_and_aligns(fashion_root, tmp_path):
    metrics = run_experiment(make_config(two_step_config({"name": "wa"})), tmp_path / "run")
    assert metrics["finished"] and metrics["accuracy_matrix"][0][0] > 100 / 6 + 10  # the base step learned
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("WA: new classes' weights scaled by gamma") == 2
    for t, seen in ((1, 8), (2, 10)):
        state = torch.load(RunFolder(tmp_path / "run").checkpoint_path(t), weights_only=False)
        weight = state["method_state"]["model"]["head.weight"]
        assert (weight >= 0).all()  # clipped after every update (and aligning keeps the sign)
        norms = weight.norm(dim=1)
        start = seen - 2
        torch.testing.assert_close(norms[start:].mean(), norms[:start].mean())
