import numpy as np
import torch

from sircil.config_sections import DataConfig, ScenarioConfig
from sircil.data.datasets import ImageSplit
from sircil.data.scenario import NAMED_ORDERS, Scenario, relabel, resolve_class_order

SEED_1993_ORDER = [
    68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38, 58, 70, 77, 1, 85, 19, 17, 50,
    28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44, 91, 41, 72, 60, 79, 52, 20, 10, 31, 54, 37, 95, 14, 71, 96,
    98, 97, 2, 64, 66, 42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11, 12, 47, 25, 30, 46, 62, 69,
    36, 61, 7, 63, 75, 5, 32, 4, 51, 48, 73, 93, 39, 67, 29, 49, 57, 33,
]


def test_default_order_is_the_seed_1993_order():
    assert resolve_class_order(DataConfig(dataset="cifar100"), 100) == SEED_1993_ORDER


def test_orders_from_seed_list_name_and_none():
    assert resolve_class_order(DataConfig(order_seed=None), 10) == list(range(10))
    assert resolve_class_order(DataConfig(class_order=[3, 1, 2, 0]), 4) == [3, 1, 2, 0]
    assert resolve_class_order(DataConfig(class_order="icarl"), 100)[:5] == [87, 0, 52, 58, 44]
    other = resolve_class_order(DataConfig(order_seed=1), 100)
    assert sorted(other) == list(range(100)) and other != SEED_1993_ORDER


def test_named_orders_are_permutations():
    for order in NAMED_ORDERS.values():
        assert sorted(order) == list(range(100))


def test_relabel_maps_each_class_to_its_position():
    split = ImageSplit(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([3, 0, 1, 2]))
    assert relabel(split, [3, 1, 2, 0]).labels.tolist() == [0, 3, 1, 2]


def test_b50_and_b0_scenarios():
    b50 = Scenario.from_config(ScenarioConfig(base_classes=50, steps=5), 100)
    assert b50.increments == (50, 10, 10, 10, 10, 10)
    assert list(b50.new_classes(2)) == list(range(60, 70))
    assert b50.step_of_class(59) == 1
    b0 = Scenario.from_config(ScenarioConfig(base_classes=0, steps=10), 100)
    assert b0.increments == (10,) * 10 and b0.end(9) == 100
    assert np.sum(Scenario.from_config(ScenarioConfig(base_classes=2, steps=4), 10).increments) == 10
