"""benchmarks/sweep_missing.py: the sweep files a GPU lease runs are exactly what an archive lacks."""

import json
import sys
from pathlib import Path

from sircil.sweep import grid, load_sweep

from test_sweep import write_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sweep_missing import write_parts  # noqa: E402


def archive_run(archive: Path, name: str, finished: bool) -> None:
    folder = archive / "runs" / name
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"finished": finished}))


def test_the_parts_hold_every_unfinished_run_and_no_fully_archived_method(tmp_path):
    sweep_file = write_sweep(tmp_path)  # Finetune and Finetune+SIR at m = 5, 1; seeds 1, 2
    archive = tmp_path / "archive"
    for seed in (1, 2):
        archive_run(archive, f"Finetune_m1_seed{seed}", finished=True)
    archive_run(archive, "Finetune_m5_seed1", finished=True)
    archive_run(archive, "Finetune_m5_seed2", finished=False)  # cut mid-run: still to measure

    files = write_parts(Path(sweep_file), archive, tmp_path / "parts", first_memory=[1])

    assert [f.name for f in files] == ["m1.yaml", "m5.yaml"]  # m = 1 first, as asked
    runs = {f.name: [r.name for r in grid(load_sweep(f))] for f in files}
    assert runs["m1.yaml"] == ["Finetune_SIR_m1_seed1", "Finetune_SIR_m1_seed2"]
    assert sorted(runs["m5.yaml"]) == sorted(f"{m}_m5_seed{s}" for m in ("Finetune", "Finetune_SIR") for s in (1, 2))
    sir = load_sweep(files[0]).methods["Finetune+SIR"]
    assert sir.overrides == ["sir.enabled=true"] and Path(sir.config).is_absolute()  # the part runs from anywhere

    (archive / "runs" / "Finetune_m5_seed2" / "metrics.json").write_text(json.dumps({"finished": True}))
    for name in ("Finetune_SIR_m1_seed1", "Finetune_SIR_m1_seed2", "Finetune_SIR_m5_seed1", "Finetune_SIR_m5_seed2"):
        archive_run(archive, name, finished=True)
    assert write_parts(Path(sweep_file), archive, tmp_path / "parts2", first_memory=[]) == []
