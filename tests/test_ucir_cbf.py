"""UCIR's optional class-balanced finetuning (the official cbf_class_incremental_cosine_imagenet.py)."""

import pytest
import torch

from sircil.config_io import ConfigError
from sircil.methods.ucir import UCIRConfig
from sircil.trainer import Trainer, run_experiment
from sircil.training.loop import Fitter

from conftest import fashion_config, make_config, stable, write_fashion_idx


def test_cbf_is_off_by_default_with_the_official_schedule_ready():
    o = UCIRConfig()
    assert o.cbf_epochs == 0  # --cb_finetune is off unless asked for
    assert (o.cbf_lr, o.cbf_milestones) == (0.01, [10])  # --ft_base_lr, --ft_lr_strat (with --ft_epochs 20)
    make_config(fashion_config(method={"name": "ucir", "cbf_epochs": 20}))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cbf_epochs": -1}, "cbf_epochs"),
        ({"cbf_epochs": 20, "cbf_lr": 0.0}, "cbf_lr"),
        ({"cbf_epochs": 5}, "cbf_milestones"),  # the default milestone 10 lies beyond 5 epochs
        ({"cbf_epochs": 20, "cbf_milestones": [12, 8]}, "cbf_milestones"),
    ],
)
def test_cbf_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        make_config(fashion_config(method={"name": "ucir", **options}))


def ucir_config(root, **method):
    return fashion_config(
        method={"name": "ucir", **method},
        data={"root": str(root), "train_per_class": 30, "test_per_class": 5, "order_seed": None},
        scenario={"base_classes": 2, "steps": 2},
        memory={"per_class": 4},
        model={"backbone": "resnet20", "last_relu": False},
        train={"epochs": 1, "batch_size": 16, "lr": 0.05},
    )


@pytest.fixture(scope="module")
def cbf_runs(tmp_path_factory):
    """The same tiny UCIR run on generated data with and without cbf; records what every cbf phase changed."""
    phases: dict[str, list[dict]] = {"on": [], "off": []}
    original = Fitter.fit
    update_memory = Trainer.update_memory
    memory = []  # the running trainer's memory

    def recording_update_memory(self, step):
        memory[:] = [self.memory]
        return update_memory(self, step)

    def recording_fit(self, phase, step, **options):
        if phase.name != "cbf":
            return original(self, phase, step, **options)
        model = self.method.model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trained = [p for group in phase.param_groups for p in group["params"]]
        result = original(self, phase, step, **options)
        after = model.state_dict()
        phases[current].append({
            "step": step.index,
            "counts": torch.bincount(self.split.labels[phase.indices], minlength=step.num_seen).tolist(),
            "in_memory": set(phase.indices.tolist()) == set(memory[0].indices().tolist()),
            "trained_is_head": len(trained) == len(model.head.weights) and all(p is w for p, w in zip(trained, model.head.weights)),
            "changed": {k for k in before if not torch.equal(before[k], after[k])},
            "lrs": [phase.lr_at(e) for e in range(phase.epochs)],
        })
        return result

    root = tmp_path_factory.mktemp("fashion")
    metrics = {}
    with pytest.MonkeyPatch.context() as mp:
        write_fashion_idx(root, mp, train_per_class=30, test_per_class=5)
        mp.setattr(Fitter, "fit", recording_fit)
        mp.setattr(Trainer, "update_memory", recording_update_memory)
        for current, method in (("off", {}), ("on", {"cbf_epochs": 3, "cbf_lr": 0.05, "cbf_milestones": [2]})):
            metrics[current] = run_experiment(make_config(ucir_config(root, **method)), tmp_path_factory.mktemp(current))
    return metrics, phases


@pytest.mark.slow
def test_cbf_trains_only_the_class_weights_on_the_balanced_memory(cbf_runs):
    _, phases = cbf_runs
    assert [p["step"] for p in phases["on"]] == [1, 2]  # after every increment, never after the base step
    for p in phases["on"]:
        assert p["counts"] == [4] * len(p["counts"])  # m = 4 exemplars of every class seen, new ones included
        assert p["in_memory"] and p["trained_is_head"]
        # every class weight, old and new, moves; backbone weights, BatchNorm statistics and the scale do not
        assert p["changed"] == {f"head.weights.{j}" for j in range(p["step"] + 1)}
        assert p["lrs"] == pytest.approx([0.05, 0.05, 0.005])


@pytest.mark.slow
def test_cbf_off_by_default_leaves_the_run_unchanged(cbf_runs):
    metrics, phases = cbf_runs
    assert phases["off"] == []
    off, on = stable(metrics["off"])["per_step"], stable(metrics["on"])["per_step"]
    assert off[0] == on[0]  # same base step: cbf starts with the first increment
    assert all(a["mean_logit_old"] != b["mean_logit_old"] for a, b in zip(off[1:], on[1:]))  # and only then changes the head
