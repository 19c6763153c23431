"""Whole runs on real Fashion-MNIST slices (and CIFAR-format files): the engine end to end."""

import json

import pytest
import torch

from sircil.cli import main
from sircil.runfolder import RunFolderError
from sircil.trainer import Trainer, run_experiment

from conftest import epoch_losses, fashion_config, make_config, stable, write_cifar100


def assert_beats_chance(metrics: dict, key: str = "accuracy", factor: float = 1.5, points: float = 15.0, steps: int | None = None) -> None:
    """Every step (or the first ``steps``): accuracy >= factor x chance and >= chance + points."""
    for record in metrics["per_step"][:steps]:
        chance = 100.0 / record["classes_seen"]
        assert record[key] >= max(factor * chance, chance + points), (record["step"], record[key], chance)


def assert_learns(metrics: dict, log: str) -> None:
    """What a tiny run can promise at every step without resting on its noisy accuracy: finite
    accuracies, and the main phase's training loss lower after its last epoch than its first
    (a 4-epoch increment on 200 images per class lands anywhere from 36% to 70%)."""
    assert all(0 <= r["accuracy"] <= 100 for r in metrics["per_step"])
    losses = epoch_losses(log)
    for record in metrics["per_step"]:
        train = losses.get((record["step"], "train"))
        if train:  # a cached base step trains nothing here
            assert train[-1] < train[0], (record["step"], train)


@pytest.mark.slow
def test_finetune_runs_end_to_end_and_beats_chance(fashion_root, tmp_path):
    out = tmp_path / "finetune"
    raw = fashion_config(data={"order_seed": None, "train_per_class": 100, "test_per_class": 50})
    metrics = run_experiment(make_config(raw), out)
    assert metrics["finished"] and len(metrics["per_step"]) == 5
    assert_beats_chance(metrics, steps=1)  # the base step: 95% against a bound of 75
    assert_learns(metrics, (out / "log.txt").read_text())
    for name in ("config.yaml", "log.txt", "metrics.json", "metrics.csv", "accuracy.png", "provenance.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{t:03d}.pt" for t in range(5)]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["average_incremental_accuracy"] == pytest.approx(metrics["average_incremental_accuracy"])
    assert [len(row) for row in on_disk["accuracy_matrix"]] == [1, 2, 3, 4, 5]
    first = on_disk["per_step"][1]
    assert {"classes_seen", "accuracy", "accuracy_old", "accuracy_new"} <= set(first)
    assert first["memory_size"] == 80 and first["classes_seen"] == 4  # after the step: 4 classes x 20
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("step,classes_seen,accuracy")
    assert "epoch 4/4" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(trained_run, tmp_path):
    again = run_experiment(make_config(trained_run.config()), tmp_path / "again")
    assert stable(again) == stable(trained_run.metrics)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_metrics(trained_run, tmp_path, monkeypatch):
    original = Trainer.run_step

    def crash_after_step_one(self, t, partial=None):
        if t == 2:
            raise KeyboardInterrupt("simulated kill")
        original(self, t, partial)

    monkeypatch.setattr(Trainer, "run_step", crash_after_step_one)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_config(trained_run.config()), tmp_path / "run")
    monkeypatch.setattr(Trainer, "run_step", original)
    resumed = run_experiment(make_config(trained_run.config()), tmp_path / "run")
    assert "resuming after step 1" in (tmp_path / "run" / "log.txt").read_text()
    assert stable(resumed) == stable(trained_run.metrics)


@pytest.mark.slow
def test_finished_run_is_not_overwritten(trained_run):
    with pytest.raises(RunFolderError, match="finished run"):
        run_experiment(make_config(trained_run.config()), trained_run.folder)
    changed = trained_run.config()
    changed["memory"]["per_class"] = 3
    with pytest.raises(RunFolderError, match="another config"):
        run_experiment(make_config(changed), trained_run.folder)


@pytest.mark.slow
def test_icarl_end_to_end_with_nme(fashion_root, tmp_path):
    raw = fashion_config(
        method={"name": "icarl"},
        data={"order_seed": None, "normalize": "pixel_mean", "train_per_class": 100, "test_per_class": 50},
        model={"last_relu": False},
        train={"lr": 0.2, "weight_decay": 2e-5, "scheduler": "step", "milestones": [3], "lr_decay": 0.2},
    )
    metrics = run_experiment(make_config(raw), tmp_path / "icarl")
    assert_beats_chance(metrics, "accuracy_nme")  # 96, 74, 56, 49, 48 against bounds of 75, 40, 32, 28, 25
    assert len(metrics["accuracy_matrix_nme"]) == 5 and "nme" in metrics


@pytest.mark.slow
def test_fixed_total_memory_budget(fashion_root, tmp_path):
    raw = fashion_config(
        data={"order_seed": None, "train_per_class": 30, "test_per_class": 20},
        memory={"per_class": None, "total": 24},
        train={"epochs": 1},
    )
    metrics = run_experiment(make_config(raw), tmp_path / "total")
    assert [r["memory_per_class"] for r in metrics["per_step"]] == [12, 6, 4, 3, 2]
    assert all(r["memory_size"] <= 24 for r in metrics["per_step"])


@pytest.mark.slow
def test_cifar100_code_path_end_to_end(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data", monkeypatch, train_per_class=10, test_per_class=4)
    raw = {
        "seed": 3,
        "method": {"name": "finetune"},
        "data": {"dataset": "cifar100", "root": str(tmp_path / "data")},
        "scenario": {"base_classes": 50, "steps": 5},
        "memory": {"per_class": 2},
        "model": {"backbone": "resnet20"},
        "train": {"epochs": 4, "batch_size": 32, "lr": 0.05, "device": "cpu", "threads": 1},
    }
    metrics = run_experiment(make_config(raw), tmp_path / "run")
    assert [r["classes_seen"] for r in metrics["per_step"]] == [50, 60, 70, 80, 90, 100]
    assert_beats_chance(metrics, factor=5.0, points=0.0)  # 45 to 90% against bounds of 10 to 5


def test_cli_rejects_bad_values_before_training(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {dataset: fashion_mnist}\n")
    assert main(["run", str(path), "--set", "memory.per_class=-3", "--out", str(tmp_path / "out")]) == 2
    assert "memory.per_class must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_run_and_config_commands(fashion_root, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"data: {{dataset: fashion_mnist, root: {fashion_root}, train_per_class: 20, test_per_class: 10}}\n"
        "method: {name: finetune}\nscenario: {base_classes: 0, steps: 2}\ntrain: {epochs: 1, batch_size: 32, device: cpu, threads: 1}\n"
    )
    assert main(["config", str(path), "--set", "memory.per_class=3"]) == 0
    assert "per_class: 3" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["finished"] and [r["classes_seen"] for r in metrics["per_step"]] == [5, 10]  # B0: 2 x 5 classes
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "finished run" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--overwrite"]) == 0


@pytest.mark.slow
def test_every_step_records_its_cost_and_the_run_its_provenance(trained_run):
    out, metrics = trained_run.folder, trained_run.metrics
    for record in metrics["per_step"]:
        assert record["wall_seconds"] > 0 and record["train_images_per_second"] > 0
        assert 50 < record["peak_memory_mb"] < 24 * 1024
        assert record["parameters"] > 400_000
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["config_hash"] == metrics["config_hash"]
    for key in ("sircil_version", "git_commit", "python", "torch", "cuda", "cudnn", "device_name", "command"):
        assert key in provenance, key
    assert provenance["torch"] and provenance["device"] == "cpu"


@pytest.mark.slow
def test_bf16_precision_runs_the_forward_passes_in_bfloat16(fashion_root, tmp_path, monkeypatch):
    """Plumbing only: bfloat16 is emulated on this CPU (about 30x slower), the speed is a GPU matter."""
    from sircil.methods.finetune import Finetune

    dtypes = set()
    original = Finetune.losses

    def recording(self, out, y, step):
        dtypes.add(out["logits"].dtype)
        return original(self, out, y, step)

    monkeypatch.setattr(Finetune, "losses", recording)
    raw = fashion_config(train={"precision": "bf16", "epochs": 1, "batch_size": 8}, scenario={"base_classes": 8, "steps": 1})
    raw["data"].update(train_per_class=8, test_per_class=4)
    metrics = run_experiment(make_config(raw), tmp_path)
    assert metrics["finished"] and dtypes == {torch.bfloat16}
    assert all(0 <= r["accuracy"] <= 100 for r in metrics["per_step"])
