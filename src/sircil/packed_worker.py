"""A worker of a packed sweep (``sircil sweep ... --worker K``, started by packed_sweep.py): it
walks the shard's runs and takes the next one that is neither finished nor claimed, by creating
a claim file with O_EXCL in the session folder, and reports its runs in ``worker<K>.json``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from .runfolder import RunFolder, atomic_write_json
from .sweep import RunState, is_done, prepare_shard, run_or_record_failure


def _claim_run(claims: Path, name: str, worker: int) -> bool:
    """Take run ``name`` for this session; False if another worker of the session already has it."""
    try:
        fd = os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{worker} {os.getpid()}\n")
    return True


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _unwind_on_forwarded_signals() -> None:
    """Raise KeyboardInterrupt on the SIGINT and SIGTERM the parent forwards, so that a run unwinds
    (locks released, logs closed), even where a background shell started us with SIGINT ignored."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread
        pass


def sweep_worker(
    sweep_file: str | Path,
    out: str | Path,
    shard_spec: tuple[int, int],
    overrides: list[str] | None,
    overwrite: bool,
    session: str | Path,
    worker: int,
    threads: int | None = None,
) -> int:
    """One worker of a packed sweep (``sircil sweep ... --worker K``): take runs of this shard that are
    neither finished nor claimed by another worker, one after the other, until none is left.
    ``threads`` caps ``train.threads`` (not part of the config hash). Reports go to
    ``<session>/worker<K>.json`` after every change."""
    _unwind_on_forwarded_signals()
    out, session = Path(out), Path(session)
    runs, configs = prepare_shard(sweep_file, out, shard_spec, overrides)
    if threads is not None:
        for cfg in configs:
            if cfg.train.threads is None or cfg.train.threads > threads:
                cfg.train.threads = threads
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    report: dict[str, Any] = {"worker": worker, "pid": os.getpid(), "device": f"cuda {device}" if device else "cpu", "done": False, "runs": []}
    report_file = session / f"worker{worker}.json"

    def publish(entry: dict[str, Any] | None = None, replace: bool = False, write: bool = True) -> None:
        if entry is not None:
            entry = {**entry, "worker": worker, "device": report["device"]}
            if replace:
                report["runs"][-1] = entry
            else:
                report["runs"].append(entry)
        if write:
            atomic_write_json(report_file, report)

    publish()
    for run, cfg in zip(runs, configs):
        folder = RunFolder(out / "runs" / run.name)
        if is_done(folder, cfg) and not overwrite:
            publish({"run": run.name, "status": RunState.FINISHED}, write=False)  # written with the next change
            continue
        if not _claim_run(session / "claims", run.name, worker):
            continue  # another worker of this sweep has it
        publish({"run": run.name, "status": RunState.RUNNING})
        try:
            status = run_or_record_failure(run, cfg, folder, overwrite)
        except KeyboardInterrupt:
            publish({"run": run.name, "status": RunState.INTERRUPTED}, replace=True)
            raise
        except BaseException as exc:
            publish({"run": run.name, "status": RunState.FAILED, "error": f"{type(exc).__name__}: {exc}"}, replace=True)
            raise
        publish(status, replace=True)
    report["done"] = True
    publish()
    return 0
