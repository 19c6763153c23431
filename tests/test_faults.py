"""Faults a user meets: a loss gone non-finite, a full disk, worker processes killed at random
moments. Each stops with a message that says what to do and leaves nothing half-done behind; rerunning
the same command ends with the metrics of an undisturbed run."""

import contextlib
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sircil.cli import main
from sircil.locks import exclusive
from sircil.methods.finetune import Finetune
from sircil.runfolder import DiskFull, RunFolder, RunFolderError, atomic_write_text
from sircil.sweep import run_sweep

from conftest import stable
from test_custom_datasets import write_npz
from test_sweep import write_sweep

# 4 classes of 16 x 16 images, B2 then 2 steps of 1 class, 3 epochs each with a mid-step checkpoint
# after every epoch: a whole run trains in seconds, and resumes mid-step
TINY = {
    "method": {"name": "finetune"},
    "model": {"backbone": "resnet20"},
    "scenario": {"base_classes": 2, "steps": 2},
    "memory": {"per_class": 5},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.05, "device": "cpu", "threads": 1, "checkpoint_every": 1},
}
STEP1_BATCHES = 4  # step 1: 60 new images + 2 x 5 exemplars, batches of 16


class FullDisk:
    """``os.write`` whose disk fills on the ``nth`` write to a file whose name matches ``pattern``: that
    write stores half its bytes, as a filling disk does, and every later one to such a file fails with
    ``code``. Other files are written as usual."""

    def __init__(self, pattern: str, code: int = errno.ENOSPC, nth: int = 1):
        self.pattern, self.code, self.nth = re.compile(pattern), code, nth
        self.hits, self.full = 0, False
        self.write = os.write

    def __call__(self, fd: int, data) -> int:
        if not self.pattern.fullmatch(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            return self.write(fd, data)
        if self.full:
            raise OSError(self.code, os.strerror(self.code))
        self.hits += 1
        self.full = self.hits == self.nth
        return self.write(fd, data[: len(data) // 2] if self.full else data)


def temporaries(folder: Path) -> list[Path]:
    return [*folder.glob(".*.tmp"), *folder.glob("checkpoints/.*.tmp")]


def epoch_records(folder: Path) -> list[dict]:
    """metrics.jsonl, every line whole."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


# --- a full disk, at the lowest level: fast ------------------------------------------------------


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "no space left on the device"), (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_mid_write_keeps_the_previous_file_and_says_what_to_do(tmp_path, monkeypatch, code, reason):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, "before\n")
    disk = FullDisk(r"\.metrics\.json\..*\.tmp", code)
    monkeypatch.setattr(os, "write", disk)
    with pytest.raises(DiskFull) as raised:
        atomic_write_text(path, "after\n" * 1000)
    assert disk.full
    assert str(raised.value).startswith(f"cannot write metrics.json in {tmp_path}: {reason}")
    assert "free space there and rerun the same command" in str(raised.value)
    assert path.read_text() == "before\n" and temporaries(tmp_path) == []


def test_an_epoch_line_cut_short_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    folder.append_epoch({"epoch": 1})
    monkeypatch.setattr(os, "write", FullDisk(r"metrics\.jsonl"))
    with pytest.raises(DiskFull, match=f"cannot write metrics.jsonl in {tmp_path}"):
        folder.append_epoch({"epoch": 2, "loss": 0.5})
    monkeypatch.undo()
    folder.append_epoch({"epoch": 2, "loss": 0.5})
    assert epoch_records(tmp_path) == [{"epoch": 1}, {"epoch": 2, "loss": 0.5}]


def test_a_full_disk_leaves_no_lock_without_its_holder(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "write", FullDisk(r"run\.lock"))
    with pytest.raises(DiskFull, match="cannot write run.lock"):
        with exclusive(tmp_path / "run"):
            pass
    assert not (tmp_path / "run.lock").exists()  # else every later run would be refused as "being run by another process"
    monkeypatch.undo()
    with exclusive(tmp_path / "run"):
        assert (tmp_path / "run.lock").read_text().endswith(f" {os.getpid()}")


def test_what_a_killed_write_leaves_is_removed_and_never_loaded(tmp_path):
    folder = RunFolder(tmp_path)
    folder.prepare("seed: 1\n", "0" * 64, overwrite=False, require_existing=False)
    folder.save_checkpoint(0, {"step": 0})
    folder.save_checkpoint(1, {"step": 1})
    torn = folder.checkpoint_path(1).read_bytes()
    folder.checkpoint_path(1).write_bytes(torn[: len(torn) // 2])  # as a disk that lies about a write would leave it
    leftovers = [tmp_path / ".metrics.json.x1y2.tmp", folder.checkpoint_dir / ".step_002.pt.x1y2.tmp"]
    for path in leftovers:
        path.write_bytes(torn[:100])  # as a SIGKILL during an atomic write leaves it
    assert folder.latest_checkpoint()["step"] == 0
    with pytest.raises(RunFolderError, match="step_001.pt is unreadable"):
        folder.load_checkpoint(1)
    folder.prepare("seed: 1\n", "0" * 64, overwrite=False, require_existing=True)  # what a rerun does first, under the run's lock
    assert temporaries(tmp_path) == [] and folder.checkpoint_steps() == [0, 1]


# --- whole runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {"dataset": "numpy", "root": str(write_npz(folder / "data.npz"))}}))
    return config


@pytest.fixture(scope="module")
def undisturbed(tiny_config, tmp_path_factory) -> dict:
    """The metrics of the tiny run, run once without a fault."""
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    assert main(["run", str(tiny_config), "--out", str(out), "--no-base-cache"]) == 0
    return stable(json.loads((out / "metrics.json").read_text()))


def run(config: Path, out: Path) -> int:
    return main(["run", str(config), "--out", str(out), "--no-base-cache"])


def poison(monkeypatch, at_call: int, kind: str) -> None:
    """Finetune's losses gain a term ``poison``: 0 (which changes nothing), except on the ``at_call``-th
    batch of step 1, where it is NaN (``loss``), or 0 with a NaN gradient (``weights``: the loss stays
    finite and the update leaves NaN weights)."""
    losses, calls = Finetune.losses, []

    def poisoned(self, out, y, step):
        terms = losses(self, out, y, step)
        calls.append(step.index)
        if step.index == 1 and calls.count(1) == at_call:
            logits = out["logits"]
            terms["poison"] = logits.mean() * float("nan") if kind == "loss" else torch.sqrt(logits.sum() * 0.0)
        else:
            terms["poison"] = torch.zeros((), device=y.device)
        return terms

    monkeypatch.setattr(Finetune, "losses", poisoned)


@pytest.mark.slow
@pytest.mark.parametrize("kind,at_call,message", [
    ("loss", STEP1_BATCHES + 2, r"non-finite loss at step 1, phase train, epoch 2/3, batch 2/4: loss nan, ce \d\.\d+, poison nan\. "),
    ("weights", 2 * STEP1_BATCHES, r"non-finite weights after step 1, phase train, epoch 2/3 \(its losses stayed finite, epoch means loss \d\.\d+, ce \d\.\d+, poison 0\)"),
])
def test_a_non_finite_loss_stops_the_run_keeps_the_last_good_checkpoint_and_a_rerun_resumes(
    tiny_config, undisturbed, tmp_path, monkeypatch, capsys, kind, at_call, message
):
    out = tmp_path / "run"
    poison(monkeypatch, at_call, kind)
    assert run(tiny_config, out) == 2
    err = capsys.readouterr().err
    assert re.search("sircil: error: " + message, err) and "Traceback" not in err
    assert "the checkpoint of step 0 is kept" in err and "rerunning the same command resumes" in err
    folder = RunFolder(out)
    assert folder.checkpoint_steps() == [0]
    partial = folder.load_partial(1)  # the one of epoch 1: nothing of epoch 2 was saved
    assert partial["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in partial["method_state"]["model"].values() if t.is_floating_point())

    monkeypatch.undo()  # the cause fixed
    assert run(tiny_config, out) == 0
    assert "step 1 train: resuming at epoch 2/3" in (out / "log.txt").read_text()
    assert stable(json.loads((out / "metrics.json").read_text())) == undisturbed


@pytest.mark.slow
@pytest.mark.parametrize("pattern,code,nth,file", [
    (r"\.step_001\.pt\..*\.tmp", errno.ENOSPC, 1, "checkpoints/step_001.pt"),
    (r"\.step_002_partial\.pt\..*\.tmp", errno.EDQUOT, 2, "checkpoints/step_002_partial.pt"),
    (r"\.metrics\.json\..*\.tmp", errno.ENOSPC, 2, "metrics.json"),
    (r"metrics\.jsonl", errno.ENOSPC, 5, "metrics.jsonl"),
], ids=["checkpoint", "mid-step checkpoint", "metrics", "epoch line"])
def test_a_disk_that_fills_during_a_run_stops_it_and_the_same_command_resumes_it(
    tiny_config, undisturbed, tmp_path, monkeypatch, capsys, pattern, code, nth, file
):
    out = tmp_path / "run"
    disk = FullDisk(pattern, code, nth)
    monkeypatch.setattr(os, "write", disk)
    assert run(tiny_config, out) == 2
    err = capsys.readouterr().err
    target = out / file
    assert disk.full and f"sircil: error: cannot write {target.name} in {target.parent}: " in err
    assert "free space there and rerun the same command" in err and "Traceback" not in err
    assert temporaries(out) == [] and epoch_records(out)
    assert not json.loads((out / "metrics.json").read_text())["finished"]

    monkeypatch.undo()  # space freed
    assert run(tiny_config, out) == 0
    assert stable(json.loads((out / "metrics.json").read_text())) == undisturbed
    assert epoch_records(out)[-1]["step"] == 2 and temporaries(out) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MiB tmpfs, which a run fills within its first steps, or a skip where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_real_full_disk_stops_a_run_and_the_same_command_resumes_it_once_space_is_freed(tiny_config, undisturbed, small_tmpfs, capsys):
    out = small_tmpfs / "run"
    assert run(tiny_config, out) == 2
    err = capsys.readouterr().err
    assert re.search(rf"sircil: error: cannot write \S+ in {re.escape(str(out))}\S*: no space left on the device", err), err
    assert temporaries(out) == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    assert run(tiny_config, out) == 0
    assert stable(json.loads((out / "metrics.json").read_text())) == undisturbed


# --- a packed sweep whose workers are killed --------------------------------------------------------


def workers(out: Path, sweep: subprocess.Popen) -> dict[int, str | None]:
    """pid -> the run it is on (None between runs) of each worker this sweep command started."""
    found = {}
    for path in out.glob(f"workers/*-{sweep.pid}/worker*.json"):
        report = json.loads(path.read_text())
        last = report["runs"][-1] if report["runs"] else None
        found[report["pid"]] = last["run"] if last is not None and last["status"] == "running" else None
    return found


def kill_a_worker_in_an_increment(out: Path, sweep: subprocess.Popen, delay: float, killed: list[int]) -> None:
    """SIGKILL a worker ``delay`` seconds after it is seen on a run with a mid-step checkpoint of a
    step >= 1 (so that, with no delay, the kill lands in the middle of an increment), and add it
    to ``killed`` (skipped there); nothing if the sweep ends first."""
    while sweep.poll() is None:
        inside = [pid for pid, name in workers(out, sweep).items()
                  if pid not in killed and name and list((out / "runs" / name).glob("checkpoints/step_00[1-9]_partial.pt"))]
        if inside:
            time.sleep(delay)
            try:
                os.kill(inside[0], signal.SIGKILL)
                killed.append(inside[0])
            except ProcessLookupError:  # it ended in the meantime
                pass
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_packed_workers_killed_at_random_moments_end_as_an_undisturbed_grid(tmp_path):
    data = write_npz(tmp_path / "data.npz")
    small = [f"{key}={value}" for key, value in {
        "data.dataset": "numpy", "data.root": data, "model.backbone": "resnet20", "scenario.base_classes": 2, "scenario.steps": 2,
        "train.epochs": 3, "train.batch_size": 16, "train.threads": 1, "train.checkpoint_every": 1,
    }.items()]
    path = write_sweep(tmp_path, memory_per_class=[5], overrides=small)  # 2 methods x 2 seeds: 4 runs
    names = [s["run"] for s in run_sweep(path, tmp_path / "reference")]
    assert len(names) == 4

    out = tmp_path / "out"
    rng = random.Random(1993)
    # the delays of the kills in each start of the sweep command: the first lands mid-step, the other anywhere
    schedule = [[0.0, rng.uniform(0.0, 1.5)]]
    command = [sys.executable, "-m", "sircil", "sweep", path, "--out", str(out), "--devices", "cpu", "--per-device", "2"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    killed: list[int] = []
    for start in range(len(schedule) + 3):
        with open(tmp_path / f"sweep{start}.err", "w") as err:
            sweep = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
            try:
                for delay in schedule[start] if start < len(schedule) else []:
                    kill_a_worker_in_an_increment(out, sweep, delay, killed)
                returncode = sweep.wait(timeout=300)
            except BaseException:  # leave no process of this sweep behind
                for pid in [sweep.pid, *workers(out, sweep)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                raise
        if returncode == 0:
            break
    assert returncode == 0, (tmp_path / f"sweep{start}.err").read_text()
    assert len(killed) == 2, "the sweep ended before every kill of the schedule: give it more work"

    for name in names:
        got = json.loads((out / "runs" / name / "metrics.json").read_text())
        want = json.loads((tmp_path / "reference" / "runs" / name / "metrics.json").read_text())
        assert [r["accuracy"] for r in got["per_step"]] == [r["accuracy"] for r in want["per_step"]], name
        assert stable(got)["per_step"] == stable(want)["per_step"], name
        assert temporaries(out / "runs" / name) == []
    logs = "".join((out / "runs" / name / "log.txt").read_text() for name in names)
    assert re.search(r"step [12] train: resuming at epoch [23]/3", logs)  # a kill landed mid-step, and that step resumed
    assert not list(out.rglob("*.lock"))  # every lock of a killed worker was taken over, then released
