"""The smallest complete method and plug-in of docs/architecture.md run as printed."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from sircil.config import METHOD_CONFIGS, PLUGIN_CONFIGS
from sircil.config_io import ConfigError
from sircil.data.datasets import dataset_spec
from sircil.methods import METHODS
from sircil.plugins import PLUGINS, build_plugins
from sircil.training.context import HeadSpec
from sircil.training.phase import Step

from conftest import fashion_config, make_config, step_context

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def example(marker: str, module: str):
    """Import the python block of the doc that contains ``marker`` as the module ``module``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    (source,) = [b for b in blocks if marker in b]
    spec = importlib.util.spec_from_loader(module, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = module.rsplit(".", 1)[0]
    sys.modules[module] = mod
    try:
        exec(compile(source, f"{DOC}:{marker}", "exec"), mod.__dict__)
    finally:
        del sys.modules[module]
    return mod


@pytest.fixture
def registries_restored():
    """The examples register themselves; later tests must not meet them."""
    registries = (METHODS, METHOD_CONFIGS, PLUGINS, PLUGIN_CONFIGS)
    before = [dict(r) for r in registries]
    yield
    for registry, saved in zip(registries, before):
        registry.clear()
        registry.update(saved)


def test_the_method_example_registers_and_trains_a_step(registries_restored):
    mod = example("class LwFCE", "sircil.methods.lwf_ce")
    cfg = make_config(fashion_config(method={"name": "lwf_ce", "kd_weight": 0.5}, model={"backbone": "resnet20"}))
    method = mod.LwFCE(cfg, dataset_spec("fashion_mnist"))
    method.expand(Step(0, 0, 2))
    method.begin_step(step_context(Step(0, 0, 2), torch.zeros(0, dtype=torch.long)))
    method.expand(Step(1, 2, 4))
    method.begin_step(step_context(Step(1, 2, 4), torch.zeros(0, dtype=torch.long)))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    terms = method.losses(method.forward(x, Step(1, 2, 4)), y, Step(1, 2, 4))
    assert set(terms) == {"ce", "kd"} and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()


def test_the_plugin_example_is_one_file_that_adjusts_the_old_classes_logits(registries_restored):
    mod = example("class OldBonus", "sircil.plugins.old_bonus")
    (plugin,) = build_plugins(make_config(fashion_config(old_bonus={"enabled": True, "value": 1.5}))).values()
    assert isinstance(plugin, mod.OldBonus)  # registered as the doc says (and removed again by the fixture)
    plugin.begin_step(step_context(Step(1, 2, 4), torch.zeros(0, dtype=torch.long)), HeadSpec(logits="scaled"))
    out = plugin.adjust({"scaled": torch.zeros(2, 4)}, torch.tensor([0, 3]))
    assert out["scaled"].tolist() == [[1.5, 1.5, 0.0, 0.0]] * 2
    assert plugin.step_record(1.0) == {"old_bonus": 1.5} and plugin.cache_key([5, 5]) is None
    with pytest.raises(ConfigError, match="old_bonus.value must be >= 0"):
        make_config(fashion_config(old_bonus={"enabled": True, "value": -1}))
