"""iCaRL's distillation targets after the model grows: the official code overwrites only the old columns."""

import torch
import torch.nn.functional as F

from sircil.data.datasets import DatasetSpec
from sircil.methods import Step, method_class
from sircil.methods.icarl import icarl_bce_loss

from conftest import fashion_config, make_config, step_context

SPEC = DatasetSpec("tiny", 10, 1, 28, None, None, False, (), "")


def test_new_classes_keep_their_one_hot_targets_after_expand_and_begin_step():
    torch.manual_seed(0)
    method = method_class("icarl")(make_config(fashion_config(method={"name": "icarl"})), SPEC)
    base, first = Step(0, 0, 2), Step(1, 2, 4)
    method.expand(base)
    method.begin_step(step_context(base, torch.zeros(0, dtype=torch.long)))
    method.expand(first)
    method.begin_step(step_context(first, torch.zeros(0, dtype=torch.long)))
    method.model.eval()
    x = torch.randn(6, 1, 28, 28)
    y = torch.tensor([2, 3, 2, 3, 0, 1])
    out = method.forward(x, first)
    with torch.no_grad():
        old_sigmoid = torch.sigmoid(method.old_model(x)["logits"][:, :2])
    # targets built independently: old columns the old net's sigmoid, new columns the one-hot labels
    targets = torch.cat([old_sigmoid, F.one_hot(y, 4).float()[:, 2:]], dim=1)
    assert out["old_logits"].shape == (6, 2)
    logits = out["logits"].detach()
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / (6 * 10)
    assert torch.allclose(icarl_bce_loss(logits, y, out["old_logits"], 10), expected, atol=1e-6)
    # with all of the old model's columns, the new classes' targets would be its untrained sigmoids
    wrong = torch.cat([torch.sigmoid(method.old_model(x)["logits"])], dim=1)
    assert not torch.allclose(wrong[:, 2:], F.one_hot(y, 4).float()[:, 2:])
