"""Resume after a hard kill in the middle of a step: the run ends exactly as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from sircil.runfolder import RunFolder

from conftest import FASHION_ROOT, stable

CONFIG = {
    "seed": 3,
    "method": {"name": "icarl"},
    "data": {"dataset": "fashion_mnist", "root": str(FASHION_ROOT), "train_per_class": 60, "test_per_class": 20},
    "scenario": {"base_classes": 6, "steps": 2},
    "memory": {"per_class": 10},
    "model": {"backbone": "resnet20"},
    # after the first mid-step checkpoint of step 1, its four other epochs leave the test time to kill the run
    "train": {"epochs": 5, "batch_size": 32, "lr": 0.05, "device": "cpu", "threads": 1, "checkpoint_every": 1},
}


def sircil(config, out, *extra):
    return [sys.executable, "-m", "sircil", "run", str(config), "--out", str(out), "--no-base-cache", *extra]


@pytest.mark.slow
def test_sigkill_mid_step_then_resume_equals_an_uninterrupted_run(fashion_root, tmp_path):
    config = tmp_path / "icarl.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(sircil(config, tmp_path / "reference"), check=True, capture_output=True, env=env, timeout=600)
    reference = json.loads((tmp_path / "reference" / "metrics.json").read_text())

    out = tmp_path / "killed"
    partial = RunFolder(out).partial_path(1)
    victim = subprocess.Popen(sircil(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 600
    while not partial.is_file() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, "the run ended before it could be killed mid-step"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert partial.is_file() and not (out / "checkpoints" / "step_001.pt").exists()
    assert not json.loads((out / "metrics.json").read_text())["finished"]

    subprocess.run(sircil(config, out), check=True, capture_output=True, env=env, timeout=600)
    resumed = json.loads((out / "metrics.json").read_text())
    log = (out / "log.txt").read_text()
    assert "step 1 train: resuming at epoch" in log
    assert stable(resumed) == stable(reference)
    assert not partial.exists()


def test_a_torn_mid_step_checkpoint_restarts_the_step(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save_partial(2, {"step": 2, "epoch": 3})
    assert folder.load_partial(2)["epoch"] == 3
    data = folder.partial_path(2).read_bytes()
    folder.partial_path(2).write_bytes(data[: len(data) // 2])
    assert folder.load_partial(2) is None
    assert folder.latest_checkpoint() is None  # mid-step files are never taken for end-of-step ones
    torch.save({"x": 1}, tmp_path / "checkpoints" / "step_000.pt")
    with pytest.raises(Exception, match="checkpoint format"):
        folder.latest_checkpoint()
