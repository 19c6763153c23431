"""Grids of independent runs: methods x steps x memory sizes x seeds, under one folder.

A sweep file names each method by a label and the config file of its recipe; the grid
axes override ``scenario.steps``, ``memory.per_class`` and ``seed`` of that config. Every
run gets its own resumable run folder ``<out>/runs/<label>_s<steps>_m<m>_seed<seed>``:
finished runs are skipped, interrupted ones resumed, and ``--shard i/n`` runs every n-th
run of the grid (from the i-th), so machines or a job array split a sweep without
coordination. Runs that share a base step share its trained checkpoint through
``<out>/base_cache`` (the base-step cache, keyed by exactly what the base step depends on).

Packed sweeps (several worker processes per device) are ``packed_sweep.py``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .config_io import ConfigError, read_yaml_mapping
from .locks import RunInProgress
from .runfolder import RunFolder, RunFolderError, atomic_write_json, atomic_write_text


class RunState(str, enum.Enum):
    """What became of a run of a sweep. The values are what the workers' reports hold and the
    command line prints; a failed run carries its error beside the state."""

    RAN = "ran"
    RESUMED = "resumed"
    FINISHED = "skipped (finished)"
    BUSY = "skipped (running in another process)"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    NOT_STARTED = "not finished (not started)"
    WORKER_STOPPED = "not finished (its worker stopped during the run)"
    NOT_FINISHED_INTERRUPTED = "not finished (interrupted)"

    def __str__(self) -> str:
        return self.value


def describe(entry: dict[str, Any]) -> str:
    """A status entry as one line: run, state, and the error of a failed run."""
    line = f"{entry['run']}: {entry['status']}" + (f": {entry['error']}" if "error" in entry else "")
    return line + (f" (traceback in {entry['traceback']})" if "traceback" in entry else "")


@dataclass
class SweepMethod:
    config: str  # config file, relative to the sweep file
    overrides: list[str] = field(default_factory=list)  # this method's own, applied after the sweep's


@dataclass
class SweepSpec:
    methods: dict[str, SweepMethod]
    steps: list[int] | None = None  # None: each config's own scenario.steps
    memory_per_class: list[int] | None = None  # None: each config's own memory
    seeds: list[int] = field(default_factory=lambda: [1993])
    overrides: list[str] = field(default_factory=list)  # applied to every run, after the grid's
    shared_base_cache: bool = True
    path: Path = Path(".")


@dataclass(frozen=True)
class SweepRun:
    label: str
    config_file: Path
    steps: int | None
    memory_per_class: int | None
    seed: int
    method_overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)
        steps = f"_s{self.steps}" if self.steps is not None else ""
        memory = f"_m{self.memory_per_class}" if self.memory_per_class is not None else ""
        return f"{slug}{steps}{memory}_seed{self.seed}"

    def config(self, overrides: list[str], cache_dir: Path | None) -> Config:
        grid = [f"seed={self.seed}"]
        if self.steps is not None:
            grid.append(f"scenario.steps={self.steps}")
        if self.memory_per_class is not None:
            grid += [f"memory.per_class={self.memory_per_class}", "memory.total=null"]
        if cache_dir is not None:
            grid.append(f"cache_dir={cache_dir}")
        try:
            return load_config(self.config_file, grid + list(overrides) + list(self.method_overrides))
        except ConfigError as exc:
            raise ConfigError(f"sweep run {self.name} ({self.config_file}): {exc}") from None


ERROR_FILE = "error.txt"  # in a failed run's folder: the traceback of its failure
_KEYS = {f.name for f in dataclasses.fields(SweepSpec)} - {"path"}


def _int_list(raw: dict[str, Any], key: str, path: Path) -> list[int] | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"sweep file {path}: {key} must be a non-empty list of integers, got {value!r}")
    return value


def _overrides(value: Any, key: str, path: Path) -> list[str]:
    value = value or []
    if not isinstance(value, list) or not all(isinstance(o, str) and "=" in o for o in value):
        raise ConfigError(f"sweep file {path}: {key} must be a list of 'key=value' strings, got {value!r}")
    return value


def load_sweep(path: str | Path, extra_overrides: list[str] | None = None) -> SweepSpec:
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep file", "see configs/sweeps/ for examples")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"sweep file {path}: unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    methods = raw.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"sweep file {path}: methods must map each label to a config file, e.g. {{PODNet: ../cifar100/podnet_b50_5steps.yaml}}")
    parsed = {}
    for label, entry in methods.items():
        if isinstance(entry, str):
            entry = {"config": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), str) or set(entry) - {"config", "overrides"}:
            raise ConfigError(
                f"sweep file {path}: methods.{label} must be a config file or {{config: FILE, overrides: [key=value, ...]}}, got {entry!r}"
            )
        parsed[str(label)] = SweepMethod(entry["config"], _overrides(entry.get("overrides"), f"methods.{label}.overrides", path))
    overrides = _overrides(raw.get("overrides"), "overrides", path)
    shared = raw.get("shared_base_cache", True)
    if not isinstance(shared, bool):
        raise ConfigError(f"sweep file {path}: shared_base_cache must be true or false")
    return SweepSpec(
        methods=parsed,
        steps=_int_list(raw, "steps", path),
        memory_per_class=_int_list(raw, "memory_per_class", path),
        seeds=_int_list(raw, "seeds", path) or [1993],
        overrides=list(overrides) + list(extra_overrides or []),
        shared_base_cache=shared,
        path=path,
    )


def grid(spec: SweepSpec) -> list[SweepRun]:
    """Every run of the sweep, in a fixed order (methods as listed, then steps, memory, seed)."""
    every_steps: list[int | None] = [*spec.steps] if spec.steps else [None]
    every_memory: list[int | None] = [*spec.memory_per_class] if spec.memory_per_class else [None]
    runs = []
    for label, method in spec.methods.items():
        for steps in every_steps:
            for m in every_memory:
                for seed in spec.seeds:
                    runs.append(SweepRun(label, spec.path.parent / method.config, steps, m, seed, tuple(method.overrides)))
    return runs


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise ConfigError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard(runs: list[SweepRun], index: int, count: int) -> list[SweepRun]:
    return runs[index::count]


def prepare_shard(
    sweep_file: str | Path, out: Path, shard_spec: tuple[int, int], overrides: list[str] | None
) -> tuple[list[SweepRun], list[Config]]:
    """This shard's runs and their configs, every config validated before any training."""
    spec = load_sweep(sweep_file, overrides)
    cache_dir = (out / "base_cache").resolve() if spec.shared_base_cache else None
    runs = shard(grid(spec), *shard_spec)
    configs = [run.config(spec.overrides, cache_dir) for run in runs]
    atomic_write_json(
        out / f"sweep_shard_{shard_spec[0]}of{shard_spec[1]}.json",
        {"sweep_file": str(Path(sweep_file).resolve()), "shard": list(shard_spec), "runs": [r.name for r in runs], "overrides": spec.overrides},
    )
    return runs, configs


def is_done(folder: RunFolder, cfg: Config) -> bool:
    return folder.is_finished() and folder.recorded_hash() == cfg.hash()


def _run_one(run: SweepRun, cfg: Config, folder: RunFolder, overwrite: bool) -> dict[str, Any]:
    """Run (or resume) one run; a run held by another live process is skipped at once, never waited for."""
    from .trainer import run_experiment

    status = RunState.RESUMED if folder.path.exists() and folder.recorded_hash() == cfg.hash() else RunState.RAN
    try:
        metrics = run_experiment(cfg, folder.path, overwrite=overwrite)
    except RunInProgress:
        return {"run": run.name, "status": RunState.BUSY}
    except RunFolderError:
        if not overwrite and is_done(folder, cfg):  # another process finished it since we looked
            return {"run": run.name, "status": RunState.FINISHED}
        raise
    return {"run": run.name, "status": status, "average_incremental_accuracy": metrics["average_incremental_accuracy"]}


def run_sweep(
    sweep_file: str | Path,
    out: str | Path,
    shard_spec: tuple[int, int] = (0, 1),
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run (or skip, or resume) this shard's runs in this process; returns one status entry per run."""
    out = Path(out)
    runs, configs = prepare_shard(sweep_file, out, shard_spec, overrides)
    statuses = []
    for run, cfg in zip(runs, configs):
        folder = RunFolder(out / "runs" / run.name)
        if is_done(folder, cfg) and not overwrite:
            statuses.append({"run": run.name, "status": RunState.FINISHED})
            continue
        statuses.append(run_or_record_failure(run, cfg, folder, overwrite))
    return statuses


def run_or_record_failure(run: SweepRun, cfg: Config, folder: RunFolder, overwrite: bool) -> dict[str, Any]:
    """``_run_one``, with a run that fails recorded as failed so that the rest of the grid still runs.
    The grid's output stays one line a run: the traceback goes to ``<run>/error.txt`` (to stderr
    where even that cannot be written, e.g. on a full disk), removed again once the run succeeds."""
    error_file = folder.path / ERROR_FILE
    try:
        status = _run_one(run, cfg, folder, overwrite)
    except Exception as exc:
        entry = {"run": run.name, "status": RunState.FAILED, "error": f"{type(exc).__name__}: {exc}"}
        try:
            folder.path.mkdir(parents=True, exist_ok=True)  # a folder holding only error.txt is resumed as new
            atomic_write_text(error_file, traceback.format_exc())
        except OSError:
            traceback.print_exc()
            return entry
        return {**entry, "traceback": str(error_file)}
    if status["status"] in (RunState.RAN, RunState.RESUMED):
        error_file.unlink(missing_ok=True)
    return status
