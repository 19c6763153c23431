"""The field's class-incremental metrics, from an accuracy matrix.

``matrix[t][j]`` is the top-1 accuracy (%) on the classes introduced at step j,
measured after step t (j <= t). Conventions (shared by iCaRL, UCIR, PODNet, DER):

- average incremental accuracy: mean over every step, the base step included, of the
  accuracy on all classes seen so far;
- last accuracy: that accuracy after the final step;
- forgetting (PyCIL's definition): mean over the tasks before the last one of the
  best accuracy ever reached on a task minus its accuracy after the final step.
"""

from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * (pred == labels).float().mean().item()


def task_accuracies(pred: torch.Tensor, labels: torch.Tensor, bounds: list[tuple[int, int]]) -> list[float]:
    """Accuracy on each task's classes; ``bounds`` lists each task's [start, end)."""
    return [accuracy(pred[(labels >= a) & (labels < b)], labels[(labels >= a) & (labels < b)]) for a, b in bounds]


def step_accuracies(pred: torch.Tensor, labels: torch.Tensor, start: int) -> dict[str, float | None]:
    """All seen / old (< start) / new (>= start) accuracies after a step."""
    old = labels < start
    return {
        "all": accuracy(pred, labels),
        "old": accuracy(pred[old], labels[old]) if bool(old.any()) else None,
        "new": accuracy(pred[~old], labels[~old]),
    }


def average_incremental_accuracy(step_acc: list[float]) -> float:
    return sum(step_acc) / len(step_acc)


def forgetting(matrix: list[list[float]]) -> float:
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    drops = [max(matrix[t][j] for t in range(j, last)) - matrix[last][j] for j in range(last)]
    return sum(drops) / len(drops)


def summarize(step_acc: list[float], matrix: list[list[float]]) -> dict[str, float]:
    return {
        "average_incremental_accuracy": average_incremental_accuracy(step_acc),
        "last_accuracy": step_acc[-1],
        "forgetting": forgetting(matrix),
    }
