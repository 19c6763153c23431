"""The run's parts (``run_parts.build_run``): a split reaches the device only as it is read, the
normalization reads the training images only where it measures them, and restoring a checkpoint
for inference leaves the training split on the host while reproducing the recorded step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import sircil
from sircil.config import load_config
from sircil.config_sections import DataConfig
from sircil.data.augment import Normalizer
from sircil.data.datasets import DeviceSplit, ImageSplit, dataset_spec
from sircil.run_parts import build_run
from sircil.runfolder import RunFolder, quiet_logger

from conftest import fashion_config


def test_a_split_moves_whole_only_when_asked():
    host = ImageSplit(torch.arange(48, dtype=torch.uint8).view(12, 1, 2, 2), torch.arange(12) % 3)
    split = DeviceSplit(host, torch.device("cpu"))
    indices = torch.tensor([7, 2, 2])
    assert torch.equal(split.take(indices), host.images[indices]) and not split.moved
    whole = split.whole()
    assert split.moved and torch.equal(whole.images, host.images) and torch.equal(whole.labels, host.labels)
    assert torch.equal(split.take(indices), host.images[indices]) and len(split) == 12


FASHION = dataset_spec("fashion_mnist")  # gives its mean and std
UNMEASURED = dataclasses.replace(FASHION, mean=None, std=None)  # as a user's dataset


@pytest.mark.parametrize("data,spec,measured", [
    (DataConfig(), FASHION, False),
    (DataConfig(normalize="pixel_mean"), FASHION, True),
    (DataConfig(), UNMEASURED, True),
    (DataConfig(mean=[0.5], std=[0.25]), UNMEASURED, False),
], ids=["dataset-stats", "pixel-mean", "measured-stats", "config-stats"])
def test_the_normalization_reads_the_training_images_only_where_it_measures(data, spec, measured):
    images = torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert (Normalizer.given(data, spec, "cpu") is None) == measured
    full = Normalizer.from_config(data, spec, images)
    other = Normalizer.from_config(data, spec, images[:0] if not measured else 255 - images)
    same = all(torch.equal(getattr(full, key), getattr(other, key)) for key in ("shift", "scale", "fill"))
    assert same != measured  # unmeasured: no image changes it; measured: other images do


TINY = dict(method={"name": "icarl"}, sir={"enabled": True}, data={"train_per_class": 20, "test_per_class": 10},
            scenario={"base_classes": 4, "steps": 2}, memory={"per_class": 3}, train={"epochs": 1, "batch_size": 16, "threads": 1})


@pytest.mark.slow
def test_restoring_a_checkpoint_moves_only_what_inference_reads(fashion_root, tmp_path, monkeypatch):
    """iCaRL + SIR: the NME classifier reads the exemplars, and SIR's replay of the last step's
    set-up embeds that step's training set on the previous model; neither needs the rest."""
    metrics = sircil.run(fashion_config(**TINY), out=tmp_path / "run")
    parts = build_run(load_config(tmp_path / "run" / "config.yaml"), torch.device("cpu"))
    taken: list[int] = []
    take = parts.train.take

    def counted_take(indices: torch.Tensor) -> torch.Tensor:
        taken.append(indices.numel())
        return take(indices)

    monkeypatch.setattr(parts.train, "take", counted_take)
    step = parts.restore_for_inference(RunFolder(tmp_path / "run"), None, quiet_logger(0))
    assert taken, "SIR's replay embeds the step's training set"
    parts.evaluator.class_means(parts.memory_indices(), step.end)  # what an export computes
    assert not parts.train.moved and not parts.test.moved
    record, _, _ = parts.evaluate(step)
    assert not parts.train.moved and parts.test.moved
    assert max(taken) < len(parts.train) and taken[-1] == len(parts.memory_indices())
    recorded = metrics["per_step"][-1]
    for key in ("accuracy", "accuracy_nme", "logit_bias_old_minus_new", "logit_bias_old_minus_new_sir_view"):
        assert record[key] == pytest.approx(recorded[key], abs=1e-9), key
