"""Using a trained model: sircil eval reproduces the recorded accuracies, export + load_run + predict
classify as the run's evaluation did, image files of any size and colour are accepted, the
Python API trains and returns metrics, and bad input gets clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sircil
from sircil.cli import main
from sircil.data.datasets import DatasetError, load_dataset
from sircil.data.scenario import apply_class_order, resolve_class_order
from sircil.runfolder import RunFolderError

from conftest import fashion_config

TINY = dict(data={"train_per_class": 40, "test_per_class": 20}, scenario={"base_classes": 4, "steps": 2},
            memory={"per_class": 5}, train={"epochs": 2, "batch_size": 16})


def icarl_config() -> dict:
    return fashion_config(method={"name": "icarl"}, sir={"enabled": True}, **TINY)


@pytest.fixture(scope="module")
def icarl_run(tmp_path_factory, fashion_root) -> tuple[Path, dict]:
    """A finished tiny iCaRL + SIR run (the NME rule, a plug-in that records), trained through the Python API."""
    folder = tmp_path_factory.mktemp("inference") / "icarl"
    return folder, sircil.run(icarl_config(), out=folder)


def finished_run(request, name: str) -> tuple[Path, dict]:
    """(folder, metrics) of the iCaRL + SIR run, or for "la" of the session's trained run
    (finetune with post-hoc logit adjustment, a plug-in that changes inference)."""
    if name == "icarl":
        return request.getfixturevalue("icarl_run")
    run = request.getfixturevalue("trained_run")
    return run.folder, run.metrics


KEYS = ("accuracy", "accuracy_old", "accuracy_new", "accuracy_nme", "logit_bias_old_minus_new", "logit_bias_old_minus_new_sir_view")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["icarl", "la"])
def test_eval_reproduces_every_recorded_step(request, name):
    folder, metrics = finished_run(request, name)
    for t, recorded in enumerate(metrics["per_step"]):
        got = sircil.evaluate_run(folder, step=t)
        for key in KEYS:
            if recorded.get(key) is not None:
                assert got[key] == pytest.approx(recorded[key], abs=1e-9), (t, key)


def _test_images(folder):
    from sircil.config import load_config

    cfg = load_config(folder / "config.yaml")
    dataset = load_dataset(cfg.data)
    dataset = apply_class_order(dataset, resolve_class_order(cfg.data, dataset.spec.num_classes))
    return dataset.test.images, dataset.test.labels


@pytest.mark.slow
@pytest.mark.parametrize("name,key", [("icarl", "accuracy_nme"), ("la", "accuracy")])
def test_exported_model_classifies_as_the_run_evaluated(request, name, key, tmp_path):
    folder, metrics = finished_run(request, name)
    assert main(["export", str(folder), "--out", str(tmp_path / "model.pt")]) == 0
    model = sircil.load_run(tmp_path / "model.pt")
    assert model.rule == ("nme" if name == "icarl" else "cnn")
    images, labels = _test_images(folder)
    seen = labels < len(model.class_names)
    probabilities = model.predict(images[seen])
    assert probabilities.shape == (int(seen.sum()), len(model.class_names))
    torch.testing.assert_close(probabilities.sum(1), torch.ones(int(seen.sum())))
    accuracy = 100.0 * float((probabilities.argmax(1) == labels[seen]).float().mean())
    assert accuracy == pytest.approx(metrics["per_step"][-1][key], abs=100.0 / int(seen.sum()) + 1e-6)  # one borderline image at most
    from_folder = sircil.load_run(folder)
    assert from_folder.metrics["average_incremental_accuracy"] == metrics["average_incremental_accuracy"]
    torch.testing.assert_close(from_folder.predict(images[seen][:8]), probabilities[:8])


@pytest.mark.slow
def test_predict_reads_image_files_of_any_size_and_colour(trained_run, tmp_path, capsys):
    folder = trained_run.folder
    images, _ = _test_images(folder)
    grey = tmp_path / "grey.png"
    Image.fromarray(images[0, 0].numpy()).save(grey)
    colour = tmp_path / "colour.jpg"
    big = np.asarray(Image.fromarray(images[0, 0].numpy()).resize((84, 84)))
    Image.fromarray(np.stack([big] * 3, axis=-1)).save(colour, quality=95)
    assert main(["predict", str(folder), str(grey), str(colour), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.count(",") == 1 for line in lines)
    model = sircil.load_run(folder)
    direct = model.class_names[int(model.predict(images[:1]).argmax())]
    assert lines[0].startswith(f"{grey}: {direct} ")  # the PNG round trip is lossless


@pytest.mark.slow
def test_bad_inputs_get_clear_errors(trained_run, tmp_path):
    folder = trained_run.folder
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    model = sircil.load_run(folder)
    with pytest.raises(DatasetError, match="cannot decode the image .*broken.png"):
        model.predict_files([broken])
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((folder / "config.yaml").read_text())
    with pytest.raises(RunFolderError, match="holds no checkpoint"):
        sircil.evaluate_run(empty)
    with pytest.raises(RunFolderError, match="no checkpoint of step 7; steps with checkpoints: \\[0, 1, 2\\]"):
        sircil.evaluate_run(folder, step=7)
    with pytest.raises(RunFolderError, match="not a run folder"):
        sircil.load_run(tmp_path)
    with pytest.raises(RunFolderError, match="not a model exported by `sircil export`"):
        sircil.load_run(broken)


@pytest.mark.slow
def test_api_run_returns_a_finished_run_without_training_it_again(icarl_run):
    folder, metrics = icarl_run
    before = (folder / "log.txt").read_text()
    again = sircil.run(icarl_config(), out=folder)
    assert again == json.loads((folder / "metrics.json").read_text()) == metrics
    assert (folder / "log.txt").read_text() == before


@pytest.mark.slow
def test_eval_command_prints_and_writes_the_record(trained_run, capsys):
    folder, metrics = trained_run.folder, trained_run.metrics
    assert main(["eval", str(folder), "--step", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((folder / "eval" / "step_001.json").read_text())
    assert printed["accuracy"] == written["accuracy"] == metrics["per_step"][1]["accuracy"]


@pytest.mark.slow
def test_every_epoch_is_a_json_line(trained_run):
    lines = [json.loads(line) for line in (trained_run.folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["phase"], r["epoch"]) for r in lines] == [(t, "train", e) for t in range(3) for e in (1, 2)]
    assert all({"loss", "ce", "accuracy", "lr", "images_per_second", "seconds"} <= set(r) for r in lines)


def test_tensorboard_is_optional_and_asked_for_clearly():
    import importlib.util

    from sircil.config_io import ConfigError
    from conftest import make_config

    raw = fashion_config(log={"tensorboard": True})
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="needs the tensorboard package"):
            make_config(raw)
    else:
        assert make_config(raw).log.tensorboard
    assert make_config(raw | {"log": {"tensorboard": False}}).hash() == make_config(fashion_config()).hash()  # logging changes no result
