"""Packed sweeps: several worker processes share the runs of a sweep (``--devices cpu --per-device 2``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sircil.cli import main
from sircil.config_io import ConfigError
from sircil.packed_sweep import cpu_count, parse_devices, plan_devices
from sircil.sweep import run_sweep

from test_sweep import SMALL, write_sweep

START = " on fashion_mnist: "  # the trainer's first log line of every start or resume of a run
DONE = "INFO done: average incremental accuracy"


def log_counts(out: Path) -> dict[str, tuple[int, int]]:
    """Per run folder: (training starts, finishes) in its log."""
    counts = {}
    for folder in sorted((out / "runs").iterdir()):
        log = (folder / "log.txt").read_text()
        counts[folder.name] = (log.count(START), log.count(DONE))
    return counts


def worker_reports(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("workers/*/worker*.json"))]


@pytest.mark.slow
def test_packed_sweep_runs_every_run_once_and_a_rerun_skips_them(fashion_root, tmp_path, capsys):
    path = write_sweep(tmp_path, memory_per_class=[5], overrides=SMALL)  # 2 methods x 2 seeds: 4 runs, one base step per seed
    out = tmp_path / "out"
    assert main(["sweep", path, "--out", str(out), "--devices", "cpu", "--per-device", "2"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "_seed" in line]
    names = ["Finetune_m5_seed1", "Finetune_m5_seed2", "Finetune_SIR_m5_seed1", "Finetune_SIR_m5_seed2"]
    assert sorted(line.split(":")[0] for line in lines) == sorted(names)  # one line per run
    assert all(": ran (worker " in line for line in lines)

    assert log_counts(out) == {name: (1, 1) for name in names}  # each run trained once, by one process
    reports = worker_reports(out)
    assert len(reports) == 2 and all(r["done"] for r in reports)
    ran = [e["run"] for r in reports for e in r["runs"] if e["status"] == "ran"]
    assert sorted(ran) == sorted(names)
    assert all(any(e["status"] == "ran" for e in r["runs"]) for r in reports), "one worker did all the work"
    cached = {}
    for name in names:
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        config = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        assert metrics["finished"] and config["train"]["threads"] == max(1, cpu_count() // 2)
        cached.setdefault(config["seed"], []).append(metrics["base_step_cached"])
    assert {seed: flags.count(False) for seed, flags in cached.items()} == {1: 1, 2: 1}  # base step trained once per seed

    assert main(["sweep", path, "--out", str(out), "--devices", "cpu", "--per-device", "2"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "_seed" in line]
    assert sorted(lines) == sorted(f"{name}: skipped (finished)" for name in names)
    # the capped train.threads is not part of the config hash: an in-process sweep sees the same runs as finished
    assert [s["status"] for s in run_sweep(path, out)] == ["skipped (finished)"] * 4
    assert log_counts(out) == {name: (1, 1) for name in names}


@pytest.mark.slow
def test_interrupted_packed_sweep_resumes_on_rerun(fashion_root, tmp_path, capsys):
    path = write_sweep(tmp_path, methods={"Finetune": "finetune.yaml"}, memory_per_class=[5], overrides=SMALL)  # 2 runs
    out = tmp_path / "out"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    parent = subprocess.Popen(
        [sys.executable, "-m", "sircil", "sweep", path, "--out", str(out), "--devices", "cpu", "--per-device", "2"],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    logs = [out / "runs" / f"Finetune_m5_seed{seed}" / "log.txt" for seed in (1, 2)]
    while not all(log.is_file() and START in log.read_text() for log in logs):  # both runs are training
        assert parent.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=60) == 130
    err = parent.stderr.read()
    assert "Finetune_m5_seed1: not finished (interrupted)" in err and "2 of 2 runs not finished" in err
    assert not list(out.glob("runs/*/run.lock")), "an interrupted worker left its run locked"

    assert main(["sweep", path, "--out", str(out), "--devices", "cpu", "--per-device", "2"]) == 0
    lines = sorted(line.split(" (worker")[0] for line in capsys.readouterr().err.splitlines() if "_seed" in line)
    assert lines == ["Finetune_m5_seed1: resumed", "Finetune_m5_seed2: resumed"]
    assert log_counts(out) == {"Finetune_m5_seed1": (2, 1), "Finetune_m5_seed2": (2, 1)}


def test_packed_sweep_option_errors(tmp_path, capsys):
    path = write_sweep(tmp_path)
    for bad in ("0,0", "cpu,0", "gpu", ""):
        with pytest.raises(ConfigError, match="--devices"):
            parse_devices(bad)
    assert parse_devices("1, 0") == ["1", "0"] and parse_devices("cpu") == ["cpu"]
    # every run pins train.device=cpu: the default is the CPU, where one worker runs in-process as before
    assert plan_devices(path, tmp_path / "out", (0, 1), [], None) == (["cpu"], ["cpu"])
    out = str(tmp_path / "out")
    assert main(["sweep", path, "--out", out, "--per-device", "0"]) == 2
    assert main(["sweep", path, "--out", out, "--devices", "cpu", "--per-device", "2", "--set", "train.device=cuda"]) == 2
    assert "train.device=cuda, but packed workers on the CPU see no GPU" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
