"""The plug-in seam. A plug-in is one file: a toy plug-in, written to a module of its own, registers
its section, options and class in one call, and then its section loads from YAML and --set (with
a did-you-mean on a typo) and validates, enters the config hash, keys the base step by its config
while it is on, and names its runs in ``sircil report``. And every step's record says what the
plug-ins applied and the head's learned scale."""

from __future__ import annotations

import importlib
import json
import math
import sys

import pytest
import torch
import yaml

import sircil

from conftest import base_step_key, fashion_config, make_config, step_context
from sircil.config import PLUGIN_CONFIGS, config_from_dict, load_config
from sircil.config_io import ConfigError
from sircil.config_sections import LogitAdjustmentConfig, SIRConfig
from sircil.plugins import PLUGINS, build_plugins
from sircil.plugins.logit_adjustment import LogitAdjustment
from sircil.plugins.sir import SIRPlugin
from sircil.report import method_label, write_report
from sircil.trainer import run_experiment
from sircil.training.base_cache import base_cache_key
from sircil.training.context import HeadSpec
from sircil.training.phase import Step

# The whole plug-in: nothing else of sircil is edited to add it.
TOY_PLUGIN = '''
from dataclasses import dataclass

import torch

from sircil.config_io import require
from sircil.config_sections import PluginConfig
from sircil.plugins import TrainPlugin, register_plugin


@dataclass
class ToyConfig(PluginConfig):
    bonus: float = 1.0

    def validate(self) -> None:
        require(self.bonus >= 0, f"toy.bonus must be >= 0, got {self.bonus}")


@register_plugin("toy", ToyConfig)
class Toy(TrainPlugin):
    """A fixed bonus on the old classes' training logits; its base step is the plain one, but it
    does not say so, so the base-step cache keys it by its section."""

    label = "TOY"

    def begin_step(self, ctx, head):
        self.num_old, self.head = ctx.step.num_old, head

    def adjust(self, out, y):
        logits = out[self.head.logits]
        bonus = torch.zeros(logits.shape[1], device=logits.device)
        bonus[: self.num_old] = self.cfg.bonus
        out[self.head.logits] = logits + bonus
        return out

    def step_record(self, scale):
        return {"toy_bonus": self.cfg.bonus}
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy plug-in's module, imported from its one file; the registries as they were afterwards."""
    saved = dict(PLUGINS), dict(PLUGIN_CONFIGS)
    (tmp_path / "toy_plugin.py").write_text(TOY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("toy_plugin")
    sys.modules.pop("toy_plugin", None)
    for registry, before in zip((PLUGINS, PLUGIN_CONFIGS), saved):
        registry.clear()
        registry.update(before)


def test_its_section_loads_from_yaml_and_set_and_is_validated(toy, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(fashion_config(toy={"enabled": True, "bonus": 2.0})))
    cfg = load_config(path, ["toy.bonus=3"])
    assert isinstance(cfg.toy, toy.ToyConfig) and cfg.toy.enabled and cfg.toy.bonus == 3.0
    assert make_config(fashion_config()).toy == toy.ToyConfig()  # a config without the section: its defaults
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg  # config.yaml holds it
    with pytest.raises(ConfigError, match="did you mean toy.bonus"):
        load_config(path, ["toy.bonsu=1"])
    with pytest.raises(ConfigError, match="did you mean toy\\?"):
        load_config(path, ["tyo.enabled=true"])
    with pytest.raises(ConfigError, match="toy.bonus must be >= 0, got -1"):
        load_config(path, ["toy.bonus=-1"])
    with pytest.raises(ConfigError, match="toy.bonus must be a number"):
        load_config(path, ["toy.bonus=much"])


def test_it_enters_the_config_hash_while_it_is_on(toy):
    def h(**toy_section):
        return make_config(fashion_config(toy=toy_section)).hash()

    plain = make_config(fashion_config()).hash()
    assert h(enabled=False, bonus=5.0) == plain  # off: not built, its options change nothing
    assert h(enabled=True) != plain and h(enabled=True, bonus=2.0) not in (plain, h(enabled=True))


def test_its_config_keys_the_base_step_while_it_is_on(toy, monkeypatch):
    def key(**toy_section):
        cfg = make_config(fashion_config(toy=toy_section))
        return base_cache_key(cfg, "cpu", [20] * 2, build_plugins(cfg), base_step_key(cfg))

    plain, on = key(), key(enabled=True, bonus=2.0)
    assert key(enabled=False, bonus=2.0) == plain
    assert on != plain and on["toy"] == {"enabled": True, "bonus": 2.0}
    assert {k: v for k, v in on.items() if k != "toy"} == plain
    monkeypatch.setattr(toy.Toy, "cache_key", lambda self, counts: None)  # one that declares its base step the plain one
    assert key(enabled=True, bonus=2.0) == plain


def synthetic_run(folder, config: dict, accuracy: float) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(make_config(config).to_yaml())
    metrics = {"finished": True, "average_incremental_accuracy": accuracy, "last_accuracy": accuracy, "forgetting": 5.0,
               "per_step": [{"step": 0, "wall_seconds": 1.0}]}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_report_names_its_runs_and_keeps_them_apart_from_the_plain_method(toy, tmp_path):
    synthetic_run(tmp_path / "plain", fashion_config(), 40.0)
    synthetic_run(tmp_path / "toy", fashion_config(toy={"enabled": True}), 50.0)
    synthetic_run(tmp_path / "toy2", fashion_config(toy={"enabled": True, "bonus": 2.0}), 60.0)
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "3 finished runs" in report and "Left out" not in report
    assert "| Finetune | 1 | 40.0 |" in report and "| Finetune+TOY | 1 | 50.0 |" in report and "| Finetune+TOY(bonus=2.0) | 1 | 60.0 |" in report
    assert "| Finetune+TOY - Finetune | +10.0 (n=1) |" in report
    assert method_label({"method": {"name": "podnet"}, "toy": {"enabled": True}, "sir": {"enabled": True}}) == "PODNet+TOY+SIR"


LABELS = torch.tensor([0] * 5 + [1] * 5 + [2] * 40 + [3] * 20)


def sir_record(head: HeadSpec, scale: float, **options) -> tuple[dict, torch.Tensor]:
    """SIR's step record at ``scale``, and the offsets its training adjustment adds to zero logits of class 2
    less its IT margins."""
    plugin = SIRPlugin(SIRConfig(enabled=True, **options))
    plugin.begin_step(step_context(Step(1, 2, 4), LABELS, embed_indices=lambda idx: LABELS[idx].float().unsqueeze(1)), head)
    y = torch.tensor([2])
    out = plugin.adjust({"logits": torch.zeros(1, 4), "scale": torch.tensor(scale)}, y)
    return plugin.step_record(scale), out["logits"][0] - plugin.sir.it_margin[y][0] * scale


@pytest.mark.parametrize("kind,options", [("linear", {}), ("cosine", {}), ("cosine", {"cosine_scale": None}), ("sigmoid", {"sigmoid": "margin"})])
def test_sirs_record_is_what_its_adjustment_adds_in_logit_units(kind, options):
    head = HeadSpec(scale="scale" if kind == "cosine" else None, kind=kind)
    record, added = sir_record(head, 2.5 if kind == "cosine" else 1.0, **options)
    torch.testing.assert_close(torch.tensor(record["sir_offset"]), added)
    assert record["sir_it"] == pytest.approx(0.5 * (2.5 if kind == "cosine" else 1.0))
    fc = torch.log(torch.tensor([5 / 40, 5 / 40, 1.0, 20 / 40]))  # class steps all 0, age 1: no attenuation
    torch.testing.assert_close(added, fc * (2.5 / 16 if (kind, options) == ("cosine", {}) else 1.0))


def test_sir_on_a_weighted_sigmoid_head_records_weights_and_logit_adjustment_its_offsets():
    record, _ = sir_record(HeadSpec(kind="sigmoid"), 1.0)
    assert "sir_offset" not in record and record["sir_weight"] == pytest.approx([8.0, 8.0, 1.0, 2.0])
    for mode, sign in (("loss", 1.0), ("post_hoc", -1.0)):
        la = LogitAdjustment(LogitAdjustmentConfig(enabled=True, mode=mode, tau=0.5))
        la.begin_step(step_context(Step(1, 2, 4), LABELS), HeadSpec())
        assert la.step_record(1.0)["la_offset"] == pytest.approx([sign * 0.5 * math.log(n / 40) for n in (5, 5, 40, 20)])


def tiny(method: dict, **sections) -> dict:
    return fashion_config(
        method=method, data={"train_per_class": 20, "test_per_class": 10}, scenario={"base_classes": 6, "steps": 2},
        memory={"per_class": 2}, train={"epochs": 1, "batch_size": 16, "threads": 1, "checkpoint_every": 0}, **sections,
    )


def learned_scale(folder, step: int, min_scale: float | None) -> float:
    scale = float(torch.load(folder / "checkpoints" / f"step_{step:03d}.pt", weights_only=False)["method_state"]["model"]["scale"])
    return scale if min_scale is None else max(scale, min_scale)


@pytest.mark.slow
@pytest.mark.parametrize("method,sir", [({"name": "ucir", "cbf_epochs": 0}, False), ({"name": "podnet", "finetune_epochs": 0}, True)])
def test_metrics_hold_the_scale_and_sirs_offsets_in_logit_units_per_step_end_to_end(fashion_root, tmp_path, method, sir):
    cfg = make_config(tiny(method, sir={"enabled": sir}))
    records = run_experiment(cfg, tmp_path)["per_step"]
    assert records == json.loads((tmp_path / "metrics.json").read_text())["per_step"]
    for t, record in enumerate(records):
        scale = record["scale"]
        assert scale == pytest.approx(learned_scale(tmp_path, t, getattr(cfg.method, "min_scale", None)))
        if not sir:
            assert not any(key.startswith("sir") for key in record)
            continue
        step = Step(t, [0, 6, 8][t], [6, 8, 10][t])
        counts = torch.tensor([2.0] * step.num_old + [20.0] * step.num_new)  # m = 2 per old class, 20 per new one
        ages = torch.tensor([t] * 6 + [t - 1] * 2 + [0] * 2)[: step.num_seen].clamp(min=0)
        fc = 0.9 ** (ages - 1).clamp(min=0).float() * torch.log(counts / counts.max())
        torch.testing.assert_close(torch.tensor(record["sir_offset"]), fc * scale / 16)  # FC in similarity units (cosine_scale 16)
        assert record["sir_it"] == pytest.approx(0.5 * scale if t else 0.0)
    replayed = sircil.evaluate_run(tmp_path, step=2)  # sircil eval: plug-ins replayed on the previous step's model
    assert {k: replayed[k] for k in records[2] if k == "scale" or k.startswith("sir")} == {k: v for k, v in records[2].items() if k == "scale" or k.startswith("sir")}
