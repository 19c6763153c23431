"""sircil sweep --slurm: a sweep's shards as one submitit job array; a task cut at its time limit is
requeued and resumes its runs. No cluster needed: submitit's debug executor shows what is
submitted, a stand-in sbatch receives the real Slurm submission, and submitit's local executor
runs the tasks as processes here and sends them the signal Slurm sends at the time limit."""

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sircil.cli import main
from sircil.config_io import ConfigError
from sircil.runfolder import RunFolder
from sircil.slurm import SlurmOptions, submit_sweep
from sircil.sweep import grid, load_sweep, run_sweep, shard

from conftest import class_templates, noisy_samples, stable
from test_sweep import write_sweep

# One run whose step 1 (8 classes after a base step of 2) takes long enough to be cut in its middle,
# with a mid-step checkpoint every 2 of its 12 epochs.
LONG_STEP_1 = ["scenario.base_classes=2", "scenario.steps=1", "train.epochs=12", "train.batch_size=16", "train.checkpoint_every=2"]


def tiny_sweep(tmp_path: Path, extra: list[str] | None = None, **grid_axes) -> str:
    """test_sweep's grid (2 methods x 2 seeds at m = 2) on 8 x 8 synthetic images, so that starting
    processes, not training, is most of a task's time."""
    templates = class_templates(10, 1, 8, seed=0)
    arrays = {}
    for split, per_class, seed in (("train", 24, 1), ("test", 8, 2)):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = noisy_samples(templates, per_class, seed)
    np.savez(tmp_path / "tiny.npz", **arrays)
    data = [
        "data.dataset=numpy", f"data.root={tmp_path / 'tiny.npz'}", "data.train_per_class=null", "data.test_per_class=null",
        "model.backbone=resnet20", "train.threads=1",
    ]
    return write_sweep(tmp_path, **{"memory_per_class": [2], "overrides": data + (extra or []), **grid_axes})


def metrics(out: Path) -> dict[str, dict]:
    return {folder.name: stable(json.loads((folder / "metrics.json").read_text())) for folder in sorted((out / "runs").iterdir())}


def test_each_array_task_runs_one_shard_of_the_grid(tmp_path):
    path = tiny_sweep(tmp_path)  # 4 runs
    out = tmp_path / "out"
    submission = submit_sweep(path, out, SlurmOptions(tasks=3), ["train.epochs=2"], devices="cpu", per_device=2, cluster="debug")
    tasks = [job.submission().function for job in submission.jobs]
    assert [task.shard for task in tasks] == [(0, 3), (1, 3), (2, 3)]
    runs = grid(load_sweep(path))
    assert sorted(run.name for task in tasks for run in shard(runs, *task.shard)) == sorted(run.name for run in runs)
    assert tasks[1].command()[1:] == [
        "-m", "sircil", "sweep", str(Path(path).resolve()), "--out", str(out.resolve()), "--shard", "1/3",
        "--set=train.epochs=2", "--devices", "cpu", "--per-device", "2",
    ]
    assert (submission.plan.gpus, submission.plan.workers, submission.folder) == (0, 2, out / "slurm")
    # defaults: a task per worker's run; every run pins the CPU, so no GPU; two named GPUs, 2 workers on each: one task
    assert len(submit_sweep(path, out, SlurmOptions(), cluster="debug").jobs) == 4
    assert submit_sweep(path, out, SlurmOptions(), devices="0,1", per_device=2, cluster="debug").plan.gpus == 2
    assert len(submit_sweep(path, out, SlurmOptions(), devices="0,1", per_device=2, cluster="debug").jobs) == 1
    with pytest.raises(ConfigError, match="--slurm-tasks must be between 1 and the grid's 4 runs"):
        submit_sweep(path, out, SlurmOptions(tasks=5), cluster="debug")
    with pytest.raises(ConfigError, match="raise --slurm-gpus"):
        submit_sweep(path, out, SlurmOptions(gpus=1), devices="0,1", cluster="debug")
    assert not (out / "runs").exists()


def test_the_command_submits_one_array_to_slurm_and_says_how_to_follow_it(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"  # stand-ins for Slurm's commands: submitit looks for srun, then runs sbatch FILE
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", 'echo "Submitted batch job 4242"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    path, out = tiny_sweep(tmp_path), tmp_path / "out"
    options = ["--slurm-partition", "gpu", "--slurm-time", "30", "--slurm-tasks", "2", "--slurm-parallel", "1", "--slurm-mem", "16"]
    assert main(["sweep", path, "--out", str(out), "--slurm", *options, "--devices", "cpu", "--per-device", "2"]) == 0
    err = capsys.readouterr().err
    assert "submitted job 4242: 2 array tasks" in err and "squeue -j 4242" in err and f"sircil report {out}" in err
    sbatch = (out / "slurm" / "4242_submission.sh").read_text().splitlines()
    for line in ("--array=0-1%1", "--partition=gpu", "--time=30", "--cpus-per-task=4", "--mem=16GB", "--signal=USR2@90", "--job-name=sircil-sweep"):
        assert f"#SBATCH {line}" in sbatch
    assert not any("gpus" in line for line in sbatch)  # --devices cpu: no GPU asked for

    assert main(["sweep", path, "--out", str(out), "--slurm", "--shard", "0/2"]) == 2
    assert main(["sweep", path, "--out", str(out), "--slurm", "--overwrite"]) == 2
    assert main(["sweep", path, "--out", str(out), "--slurm", "--slurm-time", "0"]) == 2
    err = capsys.readouterr().err
    assert "--shard does not go with --slurm" in err and "--overwrite does not go with --slurm" in err and "--slurm-time must be >= 1" in err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    assert main(["sweep", path, "--out", str(out), "--slurm"]) == 2
    assert "pip install 'sircil[slurm]'" in capsys.readouterr().err


def wait_for(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def task_process(job) -> int:
    """The process running a local job's task: the child of submitit's controller, whose pid is the job id."""
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone, or not a process
        if parent == int(job.job_id):
            return int(entry.parent.name)
    raise AssertionError(f"no task process under submitit's controller {job.job_id}")


def cut_in_step_1(job, out: Path, run: str) -> None:
    """Once the run is in the middle of step 1, send its task the signal submitit's local executor
    (like Slurm's --signal) sends a task shortly before its time limit."""
    partial = RunFolder(out / "runs" / run).partial_path(1)
    wait_for(partial.is_file, f"{partial}", seconds=180)
    os.kill(task_process(job), signal.SIGUSR2)


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> tuple[str, dict]:
    """A one-run sweep with a long step 1, and its metrics run uninterrupted in this process."""
    folder = tmp_path_factory.mktemp("one_run")
    path = tiny_sweep(folder, LONG_STEP_1, methods={"Finetune": "finetune.yaml"}, seeds=[1])
    threads = torch.get_num_threads()  # set by the run; conftest restores it per test, not per module
    run_sweep(path, folder / "reference")
    torch.set_num_threads(threads)
    return path, metrics(folder / "reference")


@pytest.mark.slow
def test_local_array_of_two_tasks_ends_as_a_sweep_run_here(tmp_path):
    path, out = tiny_sweep(tmp_path), tmp_path / "out"
    submission = submit_sweep(path, out, SlurmOptions(tasks=2, time_min=10), cluster="local")
    run_sweep(path, tmp_path / "here")  # meanwhile, the same grid in this process
    assert [job.result() for job in submission.jobs] == ["shard 0/2: every run finished", "shard 1/2: every run finished"]
    assert metrics(out) == metrics(tmp_path / "here") and len(metrics(out)) == 4
    for folder in (out / "runs").iterdir():
        assert (folder / "log.txt").read_text().count("INFO done:") == 1  # each run trained once, by its own task


@pytest.mark.slow
def test_a_task_cut_at_its_time_limit_is_requeued_and_resumes_mid_step(tmp_path, one_run):
    path, reference = one_run
    out = tmp_path / "out"
    (job,) = submit_sweep(path, out, SlurmOptions(time_min=10), cluster="local").jobs
    cut_in_step_1(job, out, "Finetune_m2_seed1")
    assert job.result() == "shard 0/1: every run finished"
    submitit_log = job.stdout()
    assert "this job is timed-out" in submitit_log and "Requeued job" in submitit_log
    assert "shard 0/1: stopped at the time limit or on preemption (exit status 130)" in submitit_log
    log = (out / "runs" / "Finetune_m2_seed1" / "log.txt").read_text()
    assert "step 1 train: resuming at epoch" in log and log.count("INFO done:") == 1
    assert metrics(out) == reference
    assert not list(out.glob("runs/*/*.lock")) and not list(out.glob("runs/*/checkpoints/*_partial.pt"))


@pytest.mark.slow
def test_without_requeueing_a_cut_task_ends_and_rerunning_the_command_completes_the_grid(tmp_path, one_run):
    path, reference = one_run
    out = tmp_path / "out"
    (job,) = submit_sweep(path, out, SlurmOptions(time_min=10, requeues=0), cluster="local").jobs
    cut_in_step_1(job, out, "Finetune_m2_seed1")
    assert "Job not requeued" in str(job.exception())
    folder = RunFolder(out / "runs" / "Finetune_m2_seed1")
    assert folder.partial_path(1).is_file() and not folder.is_finished()
    assert not list(out.glob("runs/*/*.lock")), "the stopped task left its run locked"

    (job,) = submit_sweep(path, out, SlurmOptions(time_min=10, requeues=0), cluster="local").jobs
    assert job.result() == "shard 0/1: every run finished"
    assert "step 1 train: resuming at epoch" in (folder.path / "log.txt").read_text()
    assert metrics(out) == reference
