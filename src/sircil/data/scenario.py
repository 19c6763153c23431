"""Class order and the split of classes into incremental steps.

After :func:`apply_class_order`, label ``k`` means "the k-th class of the order", so
the classes of step t are a contiguous range and the classifier width at step t is
simply the number of classes seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config_sections import DataConfig, ScenarioConfig
from .registry import Dataset, ImageSplit

# Orders of the original iCaRL code, as used by PODNet and DER's B50 configs
# (arthurdouillard/incremental_learning.pytorch, options/data/cifar100_3orders.yaml;
# the first is also iCIFAR100.class_order in inclearn/lib/data/datasets.py).
NAMED_ORDERS: dict[str, list[int]] = {
    "icarl": [
        87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86, 84, 96, 18, 24, 32,
        45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83, 17, 81, 41, 12, 37, 59, 25, 20, 80, 73,
        1, 28, 6, 46, 62, 82, 53, 9, 31, 75, 38, 63, 33, 74, 27, 22, 36, 3, 16, 21, 60, 19, 70, 90, 89,
        43, 5, 42, 65, 76, 40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99, 7, 34, 55, 54, 26, 35, 39,
    ],
    "podnet2": [
        58, 30, 93, 69, 21, 77, 3, 78, 12, 71, 65, 40, 16, 49, 89, 46, 24, 66, 19, 41, 5, 29, 15, 73, 11,
        70, 90, 63, 67, 25, 59, 72, 80, 94, 54, 33, 18, 96, 2, 10, 43, 9, 57, 81, 76, 50, 32, 6, 37, 7,
        68, 91, 88, 95, 85, 4, 60, 36, 22, 27, 39, 42, 34, 51, 55, 28, 53, 48, 38, 17, 83, 86, 56, 35, 45,
        79, 99, 84, 97, 82, 98, 26, 47, 44, 62, 13, 31, 0, 75, 14, 52, 74, 8, 20, 1, 92, 87, 23, 64, 61,
    ],
    "podnet3": [
        71, 54, 45, 32, 4, 8, 48, 66, 1, 91, 28, 82, 29, 22, 80, 27, 86, 23, 37, 47, 55, 9, 14, 68, 25,
        96, 36, 90, 58, 21, 57, 81, 12, 26, 16, 89, 79, 49, 31, 38, 46, 20, 92, 88, 40, 39, 98, 94, 19, 95,
        72, 24, 64, 18, 60, 50, 63, 61, 83, 76, 69, 35, 0, 52, 7, 65, 42, 73, 74, 30, 41, 3, 6, 53, 13,
        56, 70, 77, 34, 97, 75, 2, 17, 93, 33, 84, 99, 51, 62, 87, 5, 15, 10, 78, 67, 44, 59, 85, 43, 11,
    ],
}


def resolve_class_order(cfg: DataConfig, num_classes: int) -> list[int]:
    """Explicit list, named order, seeded permutation (seed 1993: UCIR/PyCIL), or natural."""
    if isinstance(cfg.class_order, list):
        return list(cfg.class_order)
    if isinstance(cfg.class_order, str):
        return list(NAMED_ORDERS[cfg.class_order])
    if cfg.order_seed is None:
        return list(range(num_classes))
    return np.random.RandomState(cfg.order_seed).permutation(num_classes).tolist()


def relabel(split: ImageSplit, order: list[int]) -> ImageSplit:
    position = torch.empty(len(order), dtype=torch.int64)
    position[torch.as_tensor(order)] = torch.arange(len(order))
    return ImageSplit(split.images, position[split.labels])


def apply_class_order(dataset: Dataset, order: list[int]) -> Dataset:
    return Dataset(
        spec=dataset.spec,
        train=relabel(dataset.train, order),
        test=relabel(dataset.test, order),
        class_names=[dataset.class_names[c] for c in order],
    )


@dataclass(frozen=True)
class Scenario:
    """Step t introduces classes ``[start(t), end(t))`` in class-order positions."""

    increments: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: ScenarioConfig, num_classes: int) -> "Scenario":
        size = (num_classes - cfg.base_classes) // cfg.steps
        head = (cfg.base_classes,) if cfg.base_classes > 0 else ()
        return cls(head + (size,) * cfg.steps)

    @property
    def num_steps(self) -> int:
        return len(self.increments)

    def start(self, t: int) -> int:
        return sum(self.increments[:t])

    def end(self, t: int) -> int:
        return sum(self.increments[: t + 1])

    def new_classes(self, t: int) -> range:
        return range(self.start(t), self.end(t))

    def step_of_class(self, k: int) -> int:
        for t in range(self.num_steps):
            if k < self.end(t):
                return t
        raise IndexError(f"class {k} is beyond the scenario's {self.end(self.num_steps - 1)} classes")
