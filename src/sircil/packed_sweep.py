"""Packed sweeps (``--devices 0,1 --per-device K``): K worker processes on each device, as
small models leave a GPU mostly idle (on an H100 four ResNet-32 runs at batch 128 reach
3.7x one run's throughput). Each worker (packed_worker.py) is ``sircil sweep ... --worker`` with
``CUDA_VISIBLE_DEVICES`` set to its GPU (empty on ``--devices cpu``, where ``train.threads``
is capped at the CPU count divided by the number of workers; the config hash leaves
``train.threads`` out, so runs resume whichever way they are launched). Work is handed out
dynamically: every worker walks the same runs (this shard's) and takes the next one that is
neither finished nor taken, by creating a claim file with O_EXCL in the session folder
``<out>/workers/<session>/``; a run locked by a process outside the session is skipped at
once (``RunInProgress``), never waited for. Each worker logs to ``worker<k>.log`` and
reports its runs in ``worker<k>.json`` (written atomically) in the session folder; the parent
prints one line per run from those reports, forwards SIGINT and SIGTERM to the workers, and
lists the runs left unfinished (a worker that failed or was interrupted) so that rerunning
the same command resumes them. With one worker in all on the default device, the sweep runs
in-process as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import Config
from .config_io import ConfigError
from .runfolder import RunFolder
from .sweep import RunState, SweepRun, grid, is_done, load_sweep, prepare_shard, shard

WORKERS_DIR = "workers"  # <out>/workers/<session>/: claims/, worker<k>.json, worker<k>.log


def parse_devices(text: str) -> list[str]:
    """``--devices``: ``cpu`` or a comma list of distinct CUDA device indices (``0,1``)."""
    parts = [p.strip() for p in text.split(",")]
    if parts == ["cpu"]:
        return ["cpu"]
    if not all(p.isdigit() for p in parts) or len({int(p) for p in parts}) != len(parts):
        raise ConfigError(
            f"--devices must be cpu or a comma list of distinct CUDA device indices, e.g. 0,1, got {text!r} "
            "(--per-device K packs K runs on each device)"
        )
    return [str(int(p)) for p in parts]


def default_devices(configs: list[Config]) -> list[str]:
    """Every visible GPU, or the CPU where CUDA is unavailable or every run's config pins train.device=cpu."""
    import torch

    if all(cfg.train.device == "cpu" for cfg in configs) or not torch.cuda.is_available():
        return ["cpu"]
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_devices(
    sweep_file: str | Path, out: str | Path, shard_spec: tuple[int, int], overrides: list[str] | None, devices: str | None
) -> tuple[list[str], list[str]]:
    """The devices of ``--devices`` (or the default where it is not given), and the default."""
    spec = load_sweep(sweep_file, overrides)
    cache_dir = (Path(out) / "base_cache").resolve() if spec.shared_base_cache else None
    default = default_devices([run.config(spec.overrides, cache_dir) for run in shard(grid(spec), *shard_spec)])
    return (parse_devices(devices) if devices else default), default


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under a batch scheduler), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _visible_device(index: str) -> str:
    """CUDA_VISIBLE_DEVICES for a worker on GPU ``index`` as numbered in this process (which may itself
    see only some GPUs)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--devices {index}: CUDA is not available here; use --devices cpu")
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise ConfigError(f"--devices: there is no CUDA device {index}; this process sees {count} (0..{count - 1})")
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if inherited:
        entries = [e.strip() for e in inherited.split(",")]
        if int(index) < len(entries):
            return entries[int(index)]
    return index


def _check_device(run: SweepRun, cfg: Config, device: str) -> None:
    """A worker sees only its own GPU (as cuda:0), or no GPU at all on the CPU."""
    wanted = cfg.train.device
    allowed = ("auto", "cpu") if device == "cpu" else ("auto", "cuda", "cuda:0")
    if wanted not in allowed:
        where = "on the CPU see no GPU" if device == "cpu" else "see only their own GPU, as cuda:0"
        raise ConfigError(
            f"sweep run {run.name} sets train.device={wanted}, but packed workers {where}: "
            f"--set train.device=auto (or {'cpu' if device == 'cpu' else 'cuda'}), or choose other --devices"
        )


@dataclass
class _Worker:
    index: int
    device: str
    proc: subprocess.Popen
    log: Path


@dataclass
class PackedResult:
    statuses: list[dict[str, Any]]  # one per run of the shard, in grid order
    unfinished: list[str]  # runs whose folders hold no finished run of their config
    failed: list[str]  # one line per worker that exited with an error
    interrupted: bool
    session: Path


_FINAL = (RunState.RAN, RunState.RESUMED, RunState.BUSY, RunState.FAILED)


def run_packed_sweep(
    sweep_file: str | Path,
    out: str | Path,
    devices: list[str],
    per_device: int,
    shard_spec: tuple[int, int] = (0, 1),
    overrides: list[str] | None = None,
    overwrite: bool = False,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> PackedResult:
    """Run this shard's runs in ``per_device`` worker processes on each of ``devices`` (CUDA indices or
    ``["cpu"]``). ``on_status`` gets one entry per run: as soon as a worker is done with it, or at the
    end for runs skipped as finished or left unfinished."""
    if per_device < 1:
        raise ConfigError(f"--per-device must be >= 1, got {per_device}")
    out = Path(out)
    runs, configs = prepare_shard(sweep_file, out, shard_spec, overrides)
    slots = [d for d in devices for _ in range(per_device)]
    for device in devices:
        for run, cfg in zip(runs, configs):
            _check_device(run, cfg, device)
    session = out / WORKERS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-shard{shard_spec[0]}of{shard_spec[1]}-{os.getpid()}"
    (session / "claims").mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "sircil", "sweep", str(Path(sweep_file).resolve()), "--out", str(out.resolve()),
        "--shard", f"{shard_spec[0]}/{shard_spec[1]}", *[f"--set={o}" for o in overrides or []],
        *(["--overwrite"] if overwrite else []), "--worker-dir", str(session.resolve()),
    ]
    pool = _WorkerPool(command, session, threads=max(1, cpu_count() // len(slots)))
    emitted: set[str] = set()
    with pool.forwarding_signals():
        for index, device in enumerate(slots):
            if pool.signals:  # interrupted while starting workers: the started ones have the signal, start no more
                break
            pool.start(index, device)
        while pool.running():
            time.sleep(0.5)
            for entry in _claimed_entries(session):
                if RunState(entry["status"]) in _FINAL:
                    if entry["run"] not in emitted and on_status is not None:
                        on_status(entry)
                    emitted.add(entry["run"])

    statuses = _merge(runs, session)
    unfinished = [run.name for run, cfg in zip(runs, configs) if not is_done(RunFolder(out / "runs" / run.name), cfg)]
    for status in statuses:
        if status["run"] not in emitted and on_status is not None:
            on_status(status)
    return PackedResult(statuses, unfinished, pool.failures(), bool(pool.signals), session)


class _WorkerPool:
    """The worker processes of a packed sweep: started with their device and thread share, sent the
    signals this process receives (a second one kills), never left behind."""

    def __init__(self, command: list[str], session: Path, threads: int):
        self.command, self.session, self.threads = command, session, threads
        self.workers: list[_Worker] = []
        self.signals: list[int] = []  # SIGINT/SIGTERM received by this process
        self.signalled: set[int] = set()  # pids of the workers that have the first one
        self.package_root = str(Path(__file__).resolve().parent.parent)

    def start(self, index: int, device: str) -> None:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if device == "cpu" else _visible_device(device), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.package_root, os.environ.get("PYTHONPATH")) if p)
        cmd = [*self.command, "--worker", str(index)]
        if device == "cpu":
            cmd += ["--worker-threads", str(self.threads)]
            env["OMP_NUM_THREADS"] = str(self.threads)
        log = self.session / f"worker{index}.log"
        with open(log, "ab") as fh:  # the child keeps its own descriptor
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(_Worker(index, "cpu" if device == "cpu" else f"cuda {device}", proc, log))
        if self.signals and proc.pid not in self.signalled:  # the signal came while this one started
            proc.send_signal(self.signals[0])
            self.signalled.add(proc.pid)

    def running(self) -> bool:
        return any(w.proc.poll() is None for w in self.workers)

    def forward(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        for w in self.workers:
            if w.proc.poll() is None:
                try:  # a second signal kills: locks of dead processes are taken over on the next run
                    w.proc.send_signal(signum if len(self.signals) == 1 else signal.SIGKILL)
                    self.signalled.add(w.proc.pid)
                except ProcessLookupError:
                    pass

    @contextlib.contextmanager
    def forwarding_signals(self) -> Iterator[None]:
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, self.forward)
            except ValueError:  # not the main thread: no forwarding
                pass
        try:
            yield
        finally:
            for w in self.workers:  # only on an error in this process: never leave workers behind
                if w.proc.poll() is None:
                    w.proc.terminate()
            for w in self.workers:
                w.proc.wait()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def failures(self) -> list[str]:
        stopped = (130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL)  # how a worker ends on a forwarded signal
        return [
            f"worker {w.index} ({w.device}) exited with status {w.proc.returncode}; see {w.log}"
            for w in self.workers
            if w.proc.returncode != 0 and not (self.signals and w.proc.returncode in stopped)
        ]


def _reports(session: Path) -> list[dict[str, Any]]:
    reports = []
    for path in sorted(session.glob("worker*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # written atomically, so this is only a vanished file
    return reports


def _claimed_entries(session: Path) -> list[dict[str, Any]]:
    return [entry for report in _reports(session) for entry in report["runs"] if entry["status"] != RunState.FINISHED]


def _merge(runs: list[SweepRun], session: Path) -> list[dict[str, Any]]:
    """One status per run: the claiming worker's, else 'skipped (finished)', else 'not finished'."""
    claimed = {entry["run"]: entry for entry in _claimed_entries(session)}  # one claimant per run and session
    finished = {entry["run"] for report in _reports(session) for entry in report["runs"] if entry["status"] == RunState.FINISHED}
    statuses = []
    for run in runs:
        entry = claimed.get(run.name)
        if entry is None:
            entry = {"run": run.name, "status": RunState.FINISHED if run.name in finished else RunState.NOT_STARTED}
        elif entry["status"] == RunState.RUNNING:
            entry = {**entry, "status": RunState.WORKER_STOPPED}
        elif entry["status"] == RunState.INTERRUPTED:
            entry = {**entry, "status": RunState.NOT_FINISHED_INTERRUPTED}
        statuses.append({**entry, "status": RunState(entry["status"])})
    return statuses
