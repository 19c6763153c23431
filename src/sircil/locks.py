"""Exclusive use of a file among processes, through a lock file beside it that names its holder
(host and process id), so that a lock left by a dead process is taken over: on this host when
that process is gone, from another host (a shared folder on a cluster) when the holder's
heartbeat, the lock file's modification time, has stopped for ``STALE_SECONDS``."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .runfolder import RunFolderError, reporting_disk_full, write_all


# The holder touches its lock every HEARTBEAT_SECONDS; a lock from another host untouched for
# STALE_SECONDS is a dead holder's (a node lost without unwinding). The margin covers a shared
# file system's attribute caching and clock skew between nodes.
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


class RunInProgress(RunFolderError):
    """Another live process is running this run folder."""


def exclusive(path: Path) -> contextlib.AbstractContextManager[None]:
    """Exclusive use of ``path`` or an immediate :class:`RunInProgress`; a lock left by a dead
    process is taken over."""

    def refuse(lock: Path) -> None:
        holder = lock.read_text().strip() if lock.exists() else "?"
        raise RunInProgress(f"{path.parent} is being run by another process ({holder}); wait for it, or delete {lock} if that process is gone") from None

    return _held(path, refuse)


def claim(path: Path, log: logging.Logger | None = None, poll_seconds: float = 5.0) -> contextlib.AbstractContextManager[None]:
    """Exclusive use of ``path`` among processes sharing its folder (e.g. runs of a sweep that
    would train the same cached base step): the others wait until the holder is done. The
    lock file names its holder; one left by a dead process is taken over."""
    waited = False

    def wait(lock: Path) -> None:
        nonlocal waited
        if not waited and log:
            log.info("waiting for %s (held by %s)", path, lock.read_text().strip() if lock.exists() else "?")
        waited = True
        time.sleep(poll_seconds)

    return _held(path, wait)


@contextlib.contextmanager
def _held(path: Path, busy: Callable[[Path], None]) -> Iterator[None]:
    """Hold ``path``'s lock file, naming this process in it; while a live process holds it,
    ``busy(lock)`` decides: raise to give up, return to try again."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if _holder_is_dead(lock):
                lock.unlink(missing_ok=True)
            else:
                busy(lock)
    try:
        with reporting_disk_full(lock):
            write_all(fd, f"{platform.node()} {os.getpid()}".encode())
    except BaseException:  # a lock that names no holder (left by a full disk) would never be taken over
        lock.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    stop = threading.Event()
    heartbeat = threading.Thread(target=_beat, args=(lock, stop), name=f"heartbeat {lock.name}", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        lock.unlink(missing_ok=True)


def _beat(lock: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_SECONDS):
        with contextlib.suppress(OSError):  # a vanished lock or a full disk: the holder's own exit handles it
            os.utime(lock)


def _holder_is_dead(lock: Path) -> bool:
    try:
        host, pid = lock.read_text().split()
    except (OSError, ValueError):
        return False  # being written right now, or vanished: look again
    if host != platform.node():
        try:
            return time.time() - lock.stat().st_mtime > STALE_SECONDS
        except OSError:
            return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
