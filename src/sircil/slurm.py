"""Sweeps on a Slurm cluster (``sircil sweep FILE --slurm``): the shards of a sweep as one job
array, submitted through submitit (``pip install 'sircil[slurm]'``). Array task i of n runs
``sircil sweep FILE --shard i/n`` (with the sweep's ``--devices``/``--per-device`` packing) in a
child process, in the shared sweep folder, where the run folders' locks, the base-step cache's
claims and the per-step checkpoints make concurrent tasks and reruns safe.

Requeueing follows submitit's checkpointing protocol. Slurm sends submitit's preemption signal
(SIGUSR2, ``--signal=USR2@90``) before a task's time limit and, on clusters configured so, on
preemption; submitit's handler in the task's process calls :meth:`ShardTask.checkpoint`. That
stops the child as Ctrl-C would (SIGINT: an in-process run unwinds, a packed sweep forwards it
to its workers) and waits until it has exited, so that every run folder is left with its
checkpoints and partial checkpoints written whole and its lock released; only then does it hand
submitit the same task, which submitit requeues, and which resumes the runs from those
checkpoints. The child and its workers ignore the preemption signal themselves: Slurm can deliver
it to every process of the job step, and its default action would kill them mid-write.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_io import ConfigError
from .packed_sweep import parse_devices
from .sweep import grid, load_sweep

INSTALL_HINT = "pip install 'sircil[slurm]'"


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--slurm submits through submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


@dataclass(frozen=True)
class SlurmOptions:
    """What every array task asks Slurm for (the ``--slurm-*`` options); None: the default below."""

    partition: str | None = None
    time_min: int = 240
    gpus: int | None = None  # per task; default: the --devices given (0 for cpu), else 0 where every run pins the CPU, else 1
    cpus: int | None = None  # per task; default 2 per worker process
    mem_gb: float | None = None  # per task; default the partition's
    tasks: int | None = None  # array tasks = shards; default ceil(runs / worker processes per task), about a run per worker
    parallel: int | None = None  # array tasks running at once; default all
    folder: Path | None = None  # submitit's logs and pickles; default <sweep folder>/slurm
    requeues: int = 10  # times a task cut by its time limit is requeued; 0: never requeued


class _Child:
    """A task's ``sircil sweep`` process. A thread of its own waits for it, so that the main thread,
    and submitit's signal handler running in it, only ever read ``status`` and never contend for
    Popen's wait lock."""

    def __init__(self, command: list[str], env: dict[str, str], preemption_signal: int):
        def ignore_preemption() -> None:  # in the child, before exec; inherited by its workers
            signal.signal(preemption_signal, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {preemption_signal})
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python's KeyboardInterrupt, even if this task ignores SIGINT

        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, preexec_fn=ignore_preemption)
        self.status: int | None = None
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        self.status = self.proc.wait()

    def wait(self, seconds: float | None = None) -> int | None:
        """The exit status, or None if it is still running after ``seconds``."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.status is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
        return self.status

    def stop(self, seconds: float) -> int:
        """Ctrl-C for the child, then wait for it; killed if it has not stopped within ``seconds``."""
        if self.status is None:
            self.proc.send_signal(signal.SIGINT)
        if self.wait(seconds) is None:
            print(f"sircil: the sweep did not stop within {seconds:.0f} s of SIGINT; killing it", file=sys.stderr, flush=True)
            self.proc.kill()
        while self.status is None:  # until the thread has reaped it
            time.sleep(0.1)
        return self.status


class ShardFailed(RuntimeError):
    """An array task's sweep exited with an error (failed runs, a bad config, an interruption)."""


@dataclass
class ShardTask:
    """One array task: runs shard ``shard`` of the sweep in a child process; submitit pickles it, runs
    it on a node, and calls :meth:`checkpoint` on the preemption signal."""

    sweep_file: str  # absolute
    out: str  # the sweep folder, absolute
    shard: tuple[int, int]
    overrides: tuple[str, ...] = ()
    devices: str | None = None  # --devices, passed on as given
    per_device: int = 1
    requeue: bool = True
    stop_seconds: float = 60.0  # to stop cleanly before requeueing; within submitit's 90 s between the signal and the time limit
    _child: _Child | None = field(default=None, init=False, repr=False, compare=False)

    def command(self) -> list[str]:
        devices = ["--devices", self.devices] if self.devices else []
        return [
            sys.executable, "-m", "sircil", "sweep", self.sweep_file, "--out", self.out, "--shard", f"{self.shard[0]}/{self.shard[1]}",
            *[f"--set={o}" for o in self.overrides], *devices, "--per-device", str(self.per_device),
        ]

    def __call__(self) -> str:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
        preemption = getattr(signal, "SIG" + _submitit().JobEnvironment.USR_SIG)
        print(f"shard {self.shard[0]}/{self.shard[1]}: {shlex.join(self.command())}", flush=True)
        # the preemption signal waits until the child is known to checkpoint(), which must stop it
        signal.pthread_sigmask(signal.SIG_BLOCK, {preemption})
        try:
            self._child = _Child(self.command(), env, preemption)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {preemption})
        try:
            status = self._child.wait()
        finally:  # an error or Ctrl-C in this process: never leave the sweep running
            self._child.stop(self.stop_seconds)
        if status != 0:
            raise ShardFailed(
                f"shard {self.shard[0]}/{self.shard[1]}: sircil sweep exited with status {status} (its output is in this task's "
                "log); fix what it reports, then rerun the same sircil sweep --slurm command to resume"
            )
        return f"shard {self.shard[0]}/{self.shard[1]}: every run finished"

    def checkpoint(self) -> Any:
        """Called by submitit on the preemption signal, before it requeues this task (or ends it, where
        this returns None): stop the sweep and wait until it has, so that the requeued task finds every
        run folder consistent and unlocked, and resumes it."""
        if self._child is not None:
            status = self._child.stop(self.stop_seconds)
            print(f"shard {self.shard[0]}/{self.shard[1]}: stopped at the time limit or on preemption (exit status {status})", flush=True)
        if not self.requeue:
            print("requeueing is off (--slurm-requeues 0): rerun the same sircil sweep --slurm command to resume", flush=True)
            return None
        return _submitit().helpers.DelayedSubmission(dataclasses.replace(self))


def default_gpus(devices: list[str] | None, every_run_on_cpu: bool) -> int:
    if devices is not None:
        return 0 if devices == ["cpu"] else len(devices)
    return 0 if every_run_on_cpu else 1


@dataclass
class Plan:
    tasks: list[ShardTask]
    gpus: int  # per task
    workers: int  # worker processes per task (--per-device x devices)


def plan_tasks(
    sweep_file: str | Path, out: str | Path, options: SlurmOptions, overrides: list[str] | None = None,
    devices: str | None = None, per_device: int = 1,
) -> Plan:
    """The array's tasks, shard i of n each; every run's config is validated first, so that a typo
    fails here rather than in every task."""
    if per_device < 1:
        raise ConfigError(f"--per-device must be >= 1, got {per_device}")
    spec = load_sweep(sweep_file, overrides)
    cache_dir = (Path(out) / "base_cache").resolve() if spec.shared_base_cache else None
    runs = grid(spec)
    configs = [run.config(spec.overrides, cache_dir) for run in runs]
    device_list = parse_devices(devices) if devices else None
    gpus = options.gpus if options.gpus is not None else default_gpus(device_list, all(c.train.device == "cpu" for c in configs))
    if device_list and device_list != ["cpu"] and max(int(d) for d in device_list) >= gpus:
        raise ConfigError(f"--devices {devices} names GPUs beyond the {gpus} each task gets: raise --slurm-gpus, or leave --devices out (every GPU of the task)")
    workers = per_device * (len(device_list) if device_list else max(gpus, 1))
    count = options.tasks if options.tasks is not None else math.ceil(len(runs) / workers)
    if not 1 <= count <= len(runs):
        raise ConfigError(f"--slurm-tasks must be between 1 and the grid's {len(runs)} runs (each task runs one shard), got {count}")
    tasks = [
        ShardTask(
            str(Path(sweep_file).resolve()), str(Path(out).resolve()), (i, count), tuple(overrides or ()), devices, per_device,
            requeue=options.requeues > 0,
        )
        for i in range(count)
    ]
    return Plan(tasks, gpus, workers)


def make_executor(folder: Path, options: SlurmOptions, plan: Plan, name: str, cluster: str = "slurm") -> Any:
    """submitit's executor for the array: ``cluster`` is slurm, or local / debug (tests, trying it out)."""
    submitit = _submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=options.requeues, local_max_num_timeout=options.requeues)
    except RuntimeError as exc:  # submitit's Slurm executor finds no srun here
        raise ConfigError(f"--slurm: {exc} Run the command on a machine of the cluster (e.g. its login node).") from None
    executor.update_parameters(
        name=name, timeout_min=options.time_min, nodes=1, tasks_per_node=1, gpus_per_node=plan.gpus or None,
        cpus_per_task=options.cpus if options.cpus is not None else 2 * plan.workers, mem_gb=options.mem_gb,
        slurm_partition=options.partition, slurm_array_parallelism=options.parallel,
    )
    return executor


@dataclass
class Submission:
    jobs: list[Any]  # submitit jobs, task i running shard i
    plan: Plan
    folder: Path  # submitit's


def submit_sweep(
    sweep_file: str | Path, out: str | Path, options: SlurmOptions, overrides: list[str] | None = None,
    devices: str | None = None, per_device: int = 1, cluster: str = "slurm",
) -> Submission:
    """Submit the sweep's shards as one job array (one sbatch on Slurm); returns at once."""
    utils = _submitit().core.utils
    refused = (utils.FailedJobError, utils.FailedSubmissionError)
    plan = plan_tasks(sweep_file, out, options, overrides, devices, per_device)
    folder = Path(options.folder) if options.folder is not None else Path(out) / "slurm"
    executor = make_executor(folder, options, plan, f"sircil-{Path(sweep_file).stem}", cluster)
    try:
        jobs = executor.submit_array(plan.tasks)
    except refused as exc:  # sbatch refused it: its message says why
        raise ConfigError(f"sbatch refused the job array: {exc}") from None
    return Submission(jobs, plan, folder)


def add_arguments(sweep: argparse.ArgumentParser) -> None:
    """The ``--slurm`` options of ``sircil sweep``."""
    group = sweep.add_argument_group("Slurm", f"submit the shards as one job array through submitit ({INSTALL_HINT})")
    group.add_argument(
        "--slurm", action="store_true",
        help="submit the sweep to Slurm as one job array instead of running it here: task i runs shard i (with --devices and "
        "--per-device) in the sweep folder and is requeued at its time limit to resume from its checkpoints",
    )
    group.add_argument("--slurm-partition", metavar="NAME", help="partition (default: the cluster's); other sbatch options through SBATCH_* variables, e.g. SBATCH_ACCOUNT")
    group.add_argument("--slurm-time", type=int, default=SlurmOptions.time_min, metavar="MINUTES", help="time limit of each task (default %(default)s)")
    group.add_argument(
        "--slurm-gpus", type=int, metavar="N",
        help="GPUs per task (default: as many as --devices names; else 0 when every run pins train.device=cpu, else 1)",
    )
    group.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per task (default 2 per worker process)")
    group.add_argument("--slurm-mem", type=float, metavar="GB", help="memory per task (default: the partition's)")
    group.add_argument("--slurm-tasks", type=int, metavar="N", help="array tasks, i.e. shards (default: the grid's runs / worker processes per task, rounded up)")
    group.add_argument("--slurm-parallel", type=int, metavar="N", help="array tasks running at once (default: all)")
    group.add_argument("--slurm-folder", metavar="DIR", help="submitit's folder: task logs, pickles, results (default <sweep folder>/slurm)")
    group.add_argument(
        "--slurm-requeues", type=int, default=SlurmOptions.requeues, metavar="N",
        help="times a task cut by its time limit is requeued to resume (default %(default)s); 0: never, rerun the command to resume",
    )


def options_from_args(args: argparse.Namespace) -> SlurmOptions:
    for name, value, least in (
        ("--slurm-time", args.slurm_time, 1), ("--slurm-gpus", args.slurm_gpus, 0), ("--slurm-cpus", args.slurm_cpus, 1),
        ("--slurm-tasks", args.slurm_tasks, 1), ("--slurm-parallel", args.slurm_parallel, 1), ("--slurm-requeues", args.slurm_requeues, 0),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{name} must be >= {least}, got {value}")
    if args.slurm_mem is not None and args.slurm_mem <= 0:
        raise ConfigError(f"--slurm-mem must be > 0 (GB), got {args.slurm_mem}")
    return SlurmOptions(
        partition=args.slurm_partition, time_min=args.slurm_time, gpus=args.slurm_gpus, cpus=args.slurm_cpus, mem_gb=args.slurm_mem,
        tasks=args.slurm_tasks, parallel=args.slurm_parallel, folder=Path(args.slurm_folder) if args.slurm_folder else None,
        requeues=args.slurm_requeues,
    )


def cmd_slurm_sweep(args: argparse.Namespace, out: Path) -> int:
    """``sircil sweep FILE --slurm``: submit, print the job array and how to follow it."""
    if args.shard != "0/1":
        raise ConfigError("--shard does not go with --slurm: the job array makes the shards (--slurm-tasks N)")
    if args.overwrite:
        raise ConfigError(
            "--overwrite does not go with --slurm (every requeued task would start its runs over): delete the run folders "
            f"in {out / 'runs'} to start them again"
        )
    submission = submit_sweep(args.sweep, out, options_from_args(args), args.set, args.devices, args.per_device)
    plan, jobs = submission.plan, submission.jobs
    array = jobs[0].job_id.split("_")[0]
    print(f"sweep folder: {out}", file=sys.stderr)
    count = len(plan.tasks)
    print(
        f"submitted job {array}: {count} array task{'s' if count > 1 else ''} (task i runs shard i/{count}), "
        f"each with {plan.gpus} GPU(s) and {plan.workers} worker process(es)",
        file=sys.stderr,
    )
    print(f"follow it: squeue -j {array}; task 0's log: {jobs[0].paths.stderr} (its stdout beside it)", file=sys.stderr)
    print(f"when it is done: sircil report {out} (rerunning this command resumes any run left unfinished)", file=sys.stderr)
    return 0
