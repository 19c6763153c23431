"""``sircil bench``: the synthetic data and the three-pipeline throughput report (no timing assertions)."""

import json

import numpy as np
import pytest

from sircil.bench_data import CLASSES, synthetic_cifar100
from sircil.cli import main
from sircil.config_sections import DataConfig
from sircil.data.datasets import load_dataset


def test_synthetic_data_is_cifar100_shaped_balanced_and_cached(tmp_path):
    path = synthetic_cifar100(tmp_path, 1050)
    written = path.stat().st_mtime_ns
    assert synthetic_cifar100(tmp_path, 1050) == path and path.stat().st_mtime_ns == written
    dataset = load_dataset(DataConfig(dataset="numpy", root=str(path)))
    assert dataset.spec.num_classes == CLASSES and tuple(dataset.train.images.shape) == (1050, 3, 32, 32)
    counts = np.bincount(dataset.train.labels.numpy(), minlength=CLASSES)
    assert counts.max() - counts.min() <= 1


def test_bench_reports_three_throughputs_and_consistent_ratios(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    # the smallest bench that still has a warmup epoch: 2 epochs of 2 batches on ResNet-20, one thread
    overrides = ["train.batch_size=50", "train.device=cpu", "train.threads=1", "model.backbone=resnet20"]
    argv = ["bench", "--train-images", "100", "--epochs", "2", "--workers", "0", "--data-dir", str(tmp_path), "--out", str(out)]
    argv += [arg for override in overrides for arg in ("--set", override)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    ips = result["images_per_second"]
    assert set(ips) == {"sircil", "limit", "dataloader"} and all(v > 0 for v in ips.values())
    assert result["ratios"]["sircil_to_limit"] == pytest.approx(ips["sircil"] / ips["limit"])
    assert result["ratios"]["sircil_to_dataloader"] == pytest.approx(ips["sircil"] / ips["dataloader"])
    for name, value in ips.items():
        assert value == pytest.approx(result["timed_images"][name] / result["timed_seconds"][name])
    assert result["timed_images"] == {"sircil": 100, "limit": 100, "dataloader": 100}
    assert result["warmup_epochs"] == 1 and result["batch_size"] == 50 and result["workers"] == 0 and result["device"] == "cpu"
    assert result["threads"] == 1 and result["overrides"] == overrides
    table = capsys.readouterr().out
    assert all(name in table for name in ips)


def test_bench_rejects_a_training_set_without_every_class(tmp_path, capsys):
    assert main(["bench", "--train-images", "50", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "--train-images must be at least 100" in capsys.readouterr().err


def test_host_sync_sites_name_the_lines_that_synchronized():
    """What the next GPU lease's bench reports, so its JSON says where compiled runs synchronize."""
    import warnings

    from sircil.bench import host_sync_sites

    def caught(message, filename, lineno):
        return warnings.WarningMessage(UserWarning(message), UserWarning, filename, lineno)

    sync = "called a synchronizing CUDA operation"
    records = [
        caught(sync, "/usr/lib/python3/site-packages/torch/_inductor/runtime/benchmarking.py", 77),
        caught(sync, "/usr/lib/python3/site-packages/torch/_inductor/runtime/benchmarking.py", 77),
        caught(sync, "/work/main/src/sircil/training/loop.py", 210),
        caught("an unrelated warning", "/work/main/src/sircil/bench.py", 5),
    ]
    assert host_sync_sites(records) == {"torch/_inductor/runtime/benchmarking.py:77": 2, "sircil/training/loop.py:210": 1}
    assert list(host_sync_sites(records)) == ["torch/_inductor/runtime/benchmarking.py:77", "sircil/training/loop.py:210"]
