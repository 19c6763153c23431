import pytest
import torch

from sircil.metrics import average_incremental_accuracy, forgetting, step_accuracies, summarize, task_accuracies


def test_metrics_on_a_hand_made_matrix():
    matrix = [[90.0], [70.0, 80.0], [60.0, 50.0, 85.0]]
    step_acc = [90.0, 75.0, 65.0]
    out = summarize(step_acc, matrix)
    assert out["average_incremental_accuracy"] == pytest.approx(230 / 3)
    assert out["last_accuracy"] == 65.0
    # task 0: best 90 -> 60 (30); task 1: best 80 -> 50 (30)
    assert out["forgetting"] == pytest.approx(30.0)


def test_forgetting_uses_the_best_previous_accuracy():
    assert forgetting([[50.0], [40.0, 70.0], [45.0, 80.0, 60.0], [30.0, 60.0, 55.0, 90.0]]) == pytest.approx((20 + 20 + 5) / 3)
    assert forgetting([[80.0]]) == 0.0


def test_accuracies_by_task_old_and_new():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 0, 0])
    assert task_accuracies(pred, labels, [(0, 2), (2, 4)]) == [75.0, 25.0]
    acc = step_accuracies(pred, labels, 2)
    assert acc == {"all": 50.0, "old": 75.0, "new": 25.0}
    assert step_accuracies(pred[:4], labels[:4], 0)["old"] is None
    assert average_incremental_accuracy([10.0, 20.0]) == 15.0
