"""The run folder: config, provenance, log, metrics, checkpoints and plot.

Every file is written atomically (temporary file in the same folder, fsync, rename),
so a crash mid-write leaves the previous version intact and never a truncated file; a full
disk or quota stops the run with a :class:`DiskFull` that names the file, and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import torch

from .version import __version__

CHECKPOINT_FORMAT = 1
LOCK_NAME = "run.lock"  # held by the process running a run folder (trainer.run_experiment)
TEMP_SUFFIX = ".tmp"  # of an atomic write's temporary file, .<name>.<random>.tmp beside its file
_UMASK = os.umask(0)
os.umask(_UMASK)


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message says how to proceed."""


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(RunFolderError):
    """A write ran out of disk space or quota; nothing half-written was left in the file's place."""


@contextlib.contextmanager
def reporting_disk_full(path: Path) -> Iterator[None]:
    """Turn an out-of-space or out-of-quota error while writing ``path`` into a :class:`DiskFull` that
    names the folder and the file and says how to go on."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        raise DiskFull(
            f"cannot write {path.name} in {path.parent}: {reason}. Nothing half-written was kept: free space there "
            "and rerun the same command (a run resumes from its last checkpoint written in full)"
        ) from exc


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``: a filling disk writes part of a buffer before it fails."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with reporting_disk_full(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            try:
                os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make run files private
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def remove_temporaries(folder: Path, name: str = "*") -> None:
    """The temporary files ``atomic_write_bytes`` left in ``folder`` (of the file ``name``, or of
    every file) when a kill cut its write short. The caller holds the lock that makes it the
    only writer there, so none of them is being written now."""
    for tmp in folder.glob(f".{name}.*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def git_commit() -> str | None:
    """Commit of the sircil checkout this code runs from, with '-dirty' if it has changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def provenance(config_hash: str, device: torch.device) -> dict[str, Any]:
    return {
        "config_hash": config_hash,
        "sircil_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": device_name(device),
        "hostname": platform.node(),
        "command": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def default_out(config_path: str, config_hash: str) -> Path:
    """Where a run goes when no folder is named: runs/<config name>-<hash prefix>."""
    return Path("runs") / f"{Path(config_path).stem}-{config_hash[:8]}"


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.yaml")
    metrics_file = property(lambda self: self.path / "metrics.json")
    epochs_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:03d}.pt"

    def is_finished(self) -> bool:
        try:
            return bool(json.loads(self.metrics_file.read_text()).get("finished"))
        except (OSError, ValueError):
            return False

    def recorded_hash(self) -> str | None:
        try:
            return json.loads((self.path / "provenance.json").read_text())["config_hash"]
        except (OSError, ValueError, KeyError):
            return None

    def prepare(self, config_yaml: str, config_hash: str, overwrite: bool, require_existing: bool) -> None:
        """Refuse to clobber a finished run or to resume one made from another config."""
        contents = [p for p in self.path.iterdir() if p.name != LOCK_NAME] if self.path.exists() else []
        existing = bool(contents)
        if require_existing and not existing:
            raise RunFolderError(f"--resume: {self.path} holds no run to resume; drop --resume to start one")
        if existing and overwrite:
            for top in contents:
                for item in sorted([top, *top.rglob("*")], reverse=True):
                    item.unlink() if item.is_file() or item.is_symlink() else item.rmdir()
            existing = False
        if existing:
            recorded = self.recorded_hash()
            if recorded is not None and recorded != config_hash:
                raise RunFolderError(
                    f"{self.path} holds a run made from another config (hash {recorded[:12]}, this one {config_hash[:12]}); "
                    "use another --out folder, or --overwrite to discard that run"
                )
            if self.is_finished():
                raise RunFolderError(f"{self.path} holds a finished run; pass --overwrite to run it again, or choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_temporaries()
        atomic_write_text(self.config_file, config_yaml)

    def remove_temporaries(self) -> None:
        """Temporary files of writes cut short by a kill (a failed write removes its own); the
        run folder's lock is held."""
        for folder in (self.path, self.checkpoint_dir):
            remove_temporaries(folder)

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        atomic_torch_save(self.checkpoint_path(step), {"format": CHECKPOINT_FORMAT, "sircil_version": __version__, **state})

    def partial_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:03d}_partial.pt"

    def save_partial(self, step: int, state: dict[str, Any]) -> None:
        """Mid-step state (model, optimizer, random stream, next epoch) of an unfinished step."""
        atomic_torch_save(self.partial_path(step), {"format": CHECKPOINT_FORMAT, "sircil_version": __version__, **state})

    def load_partial(self, step: int, log: logging.Logger | None = None) -> dict[str, Any] | None:
        path = self.partial_path(step)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torn or foreign: the step restarts from its beginning
            if log:
                log.warning("mid-step checkpoint %s is unreadable (%s); step %d restarts from its beginning", path, exc, step)
            return None
        return state if state.get("format") == CHECKPOINT_FORMAT else None

    def remove_partial(self, step: int) -> None:
        self.partial_path(step).unlink(missing_ok=True)

    def latest_checkpoint(self, log: logging.Logger | None = None) -> dict[str, Any] | None:
        """The newest end-of-step checkpoint that loads; a damaged one is reported and skipped."""
        for path in sorted(self.checkpoint_dir.glob("step_[0-9][0-9][0-9].pt"), reverse=True):
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # a torn or foreign file: fall back to the previous step
                if log:
                    log.warning("checkpoint %s is unreadable (%s); falling back to the previous one", path, exc)
                continue
            if state.get("format") != CHECKPOINT_FORMAT:
                raise RunFolderError(f"{path} has checkpoint format {state.get('format')}, this sircil reads {CHECKPOINT_FORMAT}")
            return state
        return None

    def checkpoint_steps(self) -> list[int]:
        return sorted(int(p.stem[5:]) for p in self.checkpoint_dir.glob("step_[0-9][0-9][0-9].pt"))

    def load_checkpoint(self, step: int | None = None) -> dict[str, Any]:
        """The end-of-step checkpoint of ``step`` (default: the last), with an error that says what exists."""
        steps = self.checkpoint_steps()
        if not steps:
            raise RunFolderError(f"{self.path} holds no checkpoint (expected {self.checkpoint_dir}/step_NNN.pt): is it a sircil run folder, and did its first step finish?")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise RunFolderError(f"{self.path} has no checkpoint of step {step}; steps with checkpoints: {steps}")
        try:
            state = torch.load(self.checkpoint_path(step), map_location="cpu", weights_only=False)
        except Exception as exc:  # sircil writes checkpoints atomically: this one was damaged or cut short elsewhere
            raise RunFolderError(f"{self.checkpoint_path(step)} is unreadable ({type(exc).__name__}: {exc}); choose another --step") from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RunFolderError(f"{self.checkpoint_path(step)} has checkpoint format {state.get('format')}, this sircil reads {CHECKPOINT_FORMAT}")
        return state

    def append_epoch(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl per epoch (a resumed run repeats the epochs it redoes: the last
        line of a (step, phase, epoch) counts). A line cut short (a full disk) is taken back, so
        that the next one does not continue it."""
        path = self.epochs_file
        with reporting_disk_full(path):
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                end = os.lseek(fd, 0, os.SEEK_END)
                try:
                    write_all(fd, (json.dumps(record) + "\n").encode())
                except OSError:
                    os.ftruncate(fd, end)
                    raise
            finally:
                os.close(fd)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.metrics_file, metrics)
        rows = metrics["per_step"]
        if rows:
            buffer = io.StringIO()
            fields = [k for k in rows[0] if not isinstance(rows[0][k], (list, dict))]
            writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.path / "metrics.csv", buffer.getvalue())

    def write_plot(self, metrics: dict[str, Any], title: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = metrics["per_step"]
        seen = [r["classes_seen"] for r in rows]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot(seen, [r["accuracy"] for r in rows], "o-", label=f"CNN (avg {metrics['average_incremental_accuracy']:.1f})")
        if rows[0].get("accuracy_nme") is not None:
            ax.plot(seen, [r["accuracy_nme"] for r in rows], "s--", label=f"NME (avg {metrics['nme']['average_incremental_accuracy']:.1f})")
        ax.set_xlabel("number of classes seen")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(seen)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=9)
        ax.legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(self.path / "accuracy.png", buffer.getvalue())


def setup_logger(path: Path, name: str = "sircil") -> logging.Logger:
    log = logging.getLogger(f"{name}.{path}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    file_handler = logging.FileHandler(path, mode="a")
    file_handler.setFormatter(fmt)
    log.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(console)
    return log


def quiet_logger(rank: int) -> logging.Logger:
    """Ranks other than 0 log nothing: rank 0 speaks for the run."""
    log = logging.getLogger(f"sircil.rank{rank}")
    log.propagate = False
    log.setLevel(logging.CRITICAL + 1)
    return log
