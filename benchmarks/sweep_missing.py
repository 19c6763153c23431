"""Sweep files for the part of a grid that an archive of finished runs does not hold yet.

    python benchmarks/sweep_missing.py SWEEP_FILE ARCHIVE OUT_DIR [--first-memory 1 20]

A run counts as measured when ``ARCHIVE/runs/<run name>/metrics.json`` says it finished, on
whatever device it ran. Each cell of the grid (steps, memory size) with a missing run gets one
sweep file in OUT_DIR holding the methods that miss at least one seed (all of the sweep's seeds, absolute config
paths, no overrides: the caller sets its device's). Prints the files, the memory sizes named by
``--first-memory`` first, so a short GPU lease measures what the results need most.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from sircil.runfolder import RunFolder
from sircil.sweep import SweepSpec, grid, load_sweep


Cell = tuple[int | None, int | None]  # (steps, memory per class) of the grid


def missing_parts(spec: SweepSpec, archive: Path, first_memory: list[int]) -> dict[Cell, dict[str, dict]]:
    """{(steps, memory): {label: method entry}} for every method with a run of that cell not in the archive."""
    parts: dict[Cell, dict[str, dict]] = {}
    for run in grid(spec):
        if not RunFolder(archive / "runs" / run.name).is_finished():
            method = {"config": str(run.config_file.resolve()), "overrides": list(run.method_overrides)}
            parts.setdefault((run.steps, run.memory_per_class), {})[run.label] = method
    order = {m: i for i, m in enumerate(first_memory)}
    return dict(sorted(parts.items(), key=lambda item: order.get(item[0][1], len(order))))


def write_parts(sweep_file: Path, archive: Path, out_dir: Path, first_memory: list[int]) -> list[Path]:
    spec = load_sweep(sweep_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for (steps, memory), methods in missing_parts(spec, archive, first_memory).items():
        part: dict = {"methods": methods, "seeds": spec.seeds, "shared_base_cache": spec.shared_base_cache}
        if steps is not None:
            part["steps"] = [steps]
        if memory is not None:
            part["memory_per_class"] = [memory]
        name = "_".join(f"{axis}{value}" for axis, value in (("s", steps), ("m", memory)) if value is not None)
        path = out_dir / f"{name or 'all'}.yaml"
        path.write_text(yaml.safe_dump(part, sort_keys=False))
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument("archive", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--first-memory", type=int, nargs="*", default=[], help="memory sizes to run first, in order")
    args = parser.parse_args()
    for path in write_parts(args.sweep_file, args.archive, args.out_dir, args.first_memory):
        print(path)


if __name__ == "__main__":
    main()
