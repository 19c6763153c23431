"""A method's part of the base-step cache key: the options it declares incremental (acting only
from the first increment on) and the method whose base step it trains (DDE: UCIR's).

Runs that differ only in such options share one trained base model, so a wrong declaration
would silently hand a run a base model trained differently. The proof is behavioural: the base
step trained with every declared option changed is bit for bit the one trained with the defaults.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import base_step_key, fashion_config, make_config
from sircil.methods import METHODS
from sircil.plugins import build_plugins
from sircil.trainer import run_experiment
from sircil.training.base_cache import base_cache_key, base_cache_path

UCIR_CHANGED = {"lambda_base": 2.0, "margin": 0.3, "hard_negatives": 1, "ranking_weight": 0.5, "cbf_epochs": 1, "cbf_lr": 0.02, "cbf_milestones": []}
# every declared incremental option, at a value other than its default
CHANGED = {
    "ucir": UCIR_CHANGED,
    "dde": {**UCIR_CHANGED, "top_k": 3, "momentum": 0.5, "effect_weight": 0.2},
    "wa": {"temperature": 3.0, "kd_weight": 2.0},
    "bic": {"temperature": 3.0, "bias_epochs": 1, "bias_lr": 0.05, "bias_milestones": [], "beta_l2": 0.2},
    "ssil": {"replay_batch": 8, "temperature": 3.0, "divide_lr_by_task": False},
    "podnet": {"pod_spatial": 1.0, "pod_flat": 2.0, "finetune_epochs": 1, "finetune_lr": 0.01, "finetune_frozen_bn": True},
    "der": {"aux_weight": 0.5, "balanced_epochs": 1, "balanced_lr": 0.05, "balanced_milestones": [], "balanced_temperature": 2.0, "sir_aux": True},
}
BASE_OPTIONS = {"der": {"warmup_epochs": 1}}  # DER's default warmup is longer than these runs


def tiny(method: dict, cache_dir, **sections) -> dict:
    return fashion_config(
        method=method, data={"train_per_class": 20, "test_per_class": 10}, scenario={"base_classes": 8, "steps": 1},
        memory={"per_class": 2}, train={"epochs": 2, "batch_size": 16, "threads": 1, "checkpoint_every": 0},
        cache_dir=str(cache_dir), **sections,
    )


def key_of(raw: dict) -> str:
    """The cache file a run of ``raw`` would use for its base step."""
    cfg = make_config(raw)
    return base_cache_path(cfg, "cpu", [20] * 8, build_plugins(cfg), base_step_key(cfg)).name


def test_every_declared_option_exists_and_is_changed_here():
    for name, cls in METHODS.items():
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        assert set(cls.incremental_options) <= fields - {"name"}, name
        assert set(CHANGED.get(name, {})) == set(cls.incremental_options), f"{name}: give every incremental option a changed value in CHANGED"
        assert cls.base_step_of is None or cls.base_step_of in METHODS, name


def test_incremental_options_and_the_base_step_of_another_method_share_its_key(tmp_path):
    for name in CHANGED:
        method = {"name": name, **BASE_OPTIONS.get(name, {})}
        assert key_of(tiny({**method, **CHANGED[name]}, tmp_path)) == key_of(tiny(method, tmp_path)), name
    assert key_of(tiny({"name": "dde", "top_k": 3}, tmp_path)) == key_of(tiny({"name": "ucir"}, tmp_path))
    assert key_of(tiny({"name": "dde"}, tmp_path)).startswith("base-ucir-")
    # options that shape the base step still separate keys
    assert key_of(tiny({"name": "wa", "weight_clipping": False}, tmp_path)) != key_of(tiny({"name": "wa"}, tmp_path))
    assert key_of(tiny({"name": "podnet", "nca_margin": 0.3}, tmp_path)) != key_of(tiny({"name": "podnet"}, tmp_path))
    assert key_of(tiny({"name": "dde", "lambda_base": 2.0}, tmp_path)) == key_of(tiny({"name": "ucir", "lambda_base": 9.0}, tmp_path))


def test_fractional_milestones_key_as_the_epochs_they_stand_for(tmp_path):
    def key(milestones):
        raw = tiny({"name": "finetune"}, tmp_path)
        raw["train"].update(epochs=20, scheduler="step", milestones=milestones)
        cfg = make_config(raw)
        return json.dumps(base_cache_key(cfg, "cpu", [20] * 8, build_plugins(cfg), base_step_key(cfg)), sort_keys=True)

    assert key([0.5, 0.75]) == key([10, 15])
    assert key([0.5, 0.8]) != key([10, 15])


def trained_base(raw: dict) -> dict[str, torch.Tensor]:
    run_experiment(make_config(raw), Path(raw["cache_dir"]) / "run")
    (cache,) = Path(raw["cache_dir"]).glob("base-*.pt")
    return torch.load(cache, weights_only=False)["model"]


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHANGED))
def test_incremental_options_leave_the_base_step_untouched(fashion_root, tmp_path, name):
    method = {"name": name, **BASE_OPTIONS.get(name, {})}
    plugins = {"sir": {"enabled": True}} if name == "der" else {}  # sir_aux acts only with SIR
    default = trained_base(tiny(method, tmp_path / "default", **plugins))
    changed = trained_base(tiny({**method, **CHANGED[name]}, tmp_path / "changed", **plugins))
    assert same_state(default, changed)


@pytest.mark.slow
def test_dde_trains_the_base_step_of_ucir(fashion_root, tmp_path):
    assert same_state(trained_base(tiny({"name": "dde"}, tmp_path / "dde")), trained_base(tiny({"name": "ucir"}, tmp_path / "ucir")))


def test_a_cache_write_cut_short_leaves_no_temporary_behind(tmp_path):
    """A SIGKILL during the cache's atomic write leaves ``.base-....pt.<random>.tmp``; the next run
    claiming that entry removes it (and only its own entry's), then trains and stores the base step."""
    import logging

    from sircil.distributed import Distributed
    from sircil.training.base_cache import cached_base_step

    cache = tmp_path / "base-finetune-0123.pt"
    torn = tmp_path / f".{cache.name}.k3j2.tmp"
    other = tmp_path / ".base-finetune-4567.pt.x9.tmp"  # another entry's write, maybe in progress
    torn.write_bytes(b"half a checkpoint")
    other.write_bytes(b"being written")

    class Method:
        state = {"w": torch.ones(2)}

        def state_dict(self):
            return self.state

        def load_state_dict(self, state):
            self.state = state

    seen, cached = cached_base_step(cache, Method(), lambda: (10, 1.0), Distributed(), logging.getLogger("test"))
    assert (seen, cached) == ((10, 1.0), False) and cache.is_file()
    assert not torn.exists() and other.exists()
    method = Method()
    method.state = {}
    assert cached_base_step(cache, method, lambda: (10, 1.0), Distributed(), logging.getLogger("test"))[1]
    assert torch.equal(method.state["w"], torch.ones(2))
