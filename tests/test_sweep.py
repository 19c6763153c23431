"""Sweeps (grid, shards, skip/resume, shared base steps) and reports (means, stds, figure)."""

import json
import math
import statistics

import pytest
import yaml

from sircil.cli import main
from sircil.config_io import ConfigError
from sircil.report import method_label, write_report
from sircil.sweep import describe, grid, load_sweep, parse_shard, run_sweep, shard

from conftest import FASHION_ROOT

# keeps the sweeps that train quick; those trained in this process also take one thread (the
# sweep's own config leaves train.threads out: test_packed_sweep.py tests a packed sweep's cap on it)
SMALL = ["model.backbone=resnet20", "data.train_per_class=20", "data.test_per_class=10"]
IN_PROCESS = [*SMALL, "train.threads=1"]


def write_sweep(tmp_path, **extra) -> str:
    body = {
        "methods": {"Finetune": "finetune.yaml", "Finetune+SIR": {"config": "finetune.yaml", "overrides": ["sir.enabled=true"]}},
        "memory_per_class": [5, 1],
        "seeds": [1, 2],
        **extra,
    }
    config = {
        "method": {"name": "finetune"},
        "data": {"dataset": "fashion_mnist", "root": str(FASHION_ROOT), "train_per_class": 40, "test_per_class": 20},
        "scenario": {"base_classes": 6, "steps": 2},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.02, "device": "cpu"},
    }
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path)


def test_shards_cover_the_grid_exactly_once(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, steps=[1, 2]))
    runs = grid(spec)
    assert len(runs) == 2 * 2 * 2 * 2 and len({r.name for r in runs}) == len(runs)
    for n in (1, 3, 5):
        parts = [shard(runs, i, n) for i in range(n)]
        names = [r.name for part in parts for r in part]
        assert sorted(names) == sorted(r.name for r in runs)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_sweep_file_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_sweep(write_sweep(tmp_path, memory=[1]))
    with pytest.raises(ConfigError, match="memory_per_class"):
        load_sweep(write_sweep(tmp_path, memory_per_class=["x"]))
    spec = load_sweep(write_sweep(tmp_path, overrides=["memory.per_clas=3"]))
    with pytest.raises(ConfigError, match="Finetune_m5_seed1.*did you mean memory.per_class"):
        grid(spec)[0].config(spec.overrides, None)


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_redoing_runs_and_trains_each_base_once(fashion_root, tmp_path, monkeypatch):
    path = write_sweep(tmp_path, overrides=IN_PROCESS)
    out = tmp_path / "out"
    from sircil import trainer

    real = trainer.run_experiment
    calls = []

    def crash_on_third(cfg, folder, **kw):
        calls.append(folder.name)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(cfg, folder, **kw)

    monkeypatch.setattr(trainer, "run_experiment", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(path, out)
    monkeypatch.setattr(trainer, "run_experiment", real)
    statuses = run_sweep(path, out)
    assert [s["status"] for s in statuses[:2]] == ["skipped (finished)"] * 2
    assert {s["status"] for s in statuses[2:]} == {"ran"}
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 8
    cached = {}
    for folder in runs:
        metrics = json.loads((folder / "metrics.json").read_text())
        seed = yaml.safe_load((folder / "config.yaml").read_text())["seed"]
        cached.setdefault(seed, []).append(metrics["base_step_cached"])
    # per seed: four runs (2 memory sizes x with/without SIR) share one base step, trained once
    assert {seed: flags.count(False) for seed, flags in cached.items()} == {1: 1, 2: 1}
    assert len(list((out / "base_cache").glob("base-*.pt"))) == 2
    again = run_sweep(path, out, shard_spec=(1, 2))
    assert [s["status"] for s in again] == ["skipped (finished)"] * 4

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "fashion_mnist, 2 steps: average incremental accuracy" in report and "| Finetune+SIR | 2 |" in report  # sir.enabled=true alone: the whole method
    assert (out / "figure.png").stat().st_size > 10_000


def synthetic_run(folder, method, sir, memory, seed, accuracy, last, steps=5, dataset="cifar100"):
    folder.mkdir(parents=True)
    config = {
        "seed": seed,
        "method": {"name": method},
        "data": {"dataset": dataset},
        "scenario": {"base_classes": 50, "steps": steps},
        "memory": {"per_class": memory},
        "sir": {"enabled": sir, "fc": 1.0, "ca": 0.9, "it": 0.5},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    per_step = [{"step": 0, "wall_seconds": 1800.0}, {"step": 1, "wall_seconds": 1800.0}]
    metrics = {"finished": True, "average_incremental_accuracy": accuracy, "last_accuracy": last, "forgetting": 10.0, "per_step": per_step}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_gives_means_and_standard_deviations_over_seeds(tmp_path):
    values = {1: (60.0, 50.0), 2: (62.0, 51.0), 3: (67.0, 55.0)}
    for seed, (acc, last) in values.items():
        synthetic_run(tmp_path / f"pod_{seed}", "podnet", True, 5, seed, acc, last)
    synthetic_run(tmp_path / "der", "der", False, 20, 1, 70.0, 60.0, steps=10)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("{}")
    (tmp_path / "unfinished" / "metrics.json").write_text(json.dumps({"finished": False}))
    write_report(tmp_path, paper=True)
    report = (tmp_path / "report.md").read_text()
    accs = [v[0] for v in values.values()]
    expected = f"| SIR_P | 3 | {statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f} |"
    assert expected in report
    assert f"| SIR_P | 3 | {statistics.fmean([v[1] for v in values.values()]):.1f} ± {statistics.stdev([v[1] for v in values.values()]):.1f} |" in report
    assert "| DER | 1 | 70.0 |" in report and "| DER (paper) | | 72.5 |" in report
    assert "4 finished runs (1 unfinished left out); 4.00 device-hours" in report
    assert (tmp_path / "figure.png").is_file()


def test_report_gives_the_drop_from_the_largest_memory_to_the_smallest_paired_by_seed(tmp_path):
    """The paper's headline quantity: m = 20 minus m = 1 per seed, mean and 95% t-interval."""
    for seed, (big, small) in {1: (70.0, 50.0), 2: (72.0, 51.0), 3: (71.0, 49.0)}.items():
        synthetic_run(tmp_path / f"pod20_{seed}", "podnet", False, 20, seed, big, big)
        synthetic_run(tmp_path / f"pod1_{seed}", "podnet", False, 1, seed, small, small)
    synthetic_run(tmp_path / "der20", "der", False, 20, 1, 75.0, 70.0)  # no m = 1: no drop
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    # drops 20, 21, 22: mean 21, std 1, half-width 4.303 / sqrt(3) = 2.48
    assert "## cifar100, 5 steps: the drop from m=20 to m=1, average incremental accuracy, paired by seed" in report
    assert "| PODNet | +21.0 [+18.5, +23.5] |" in report
    assert "| DER | +" not in report


def test_method_labels_follow_the_paper():
    assert method_label({"method": {"name": "podnet"}, "sir": {"enabled": True, "fc": 1, "ca": 0.9, "it": 0.5}}) == "SIR_P"
    assert method_label({"method": {"name": "der"}, "sir": {"enabled": False}}) == "DER"
    # a PODNet without its classifier finetuning is a variant of its own, not a duplicate of SIR_P
    assert method_label({"method": {"name": "podnet", "finetune_epochs": 0}, "sir": {"enabled": True, "cosine_scale": None}}) == (
        "PODNet(finetune_epochs=0)+SIR(cosine_scale=None)")
    assert method_label({"method": {"name": "podnet"}, "sir": {"enabled": True}}) == "SIR_P"  # enabled alone: the whole method
    assert method_label({"method": {"name": "ucir"}, "sir": {"enabled": True, "fc": 1, "ca": 1.0, "it": 0.5}}) == "UCIR+SIR[FC+IT]"


def test_report_on_an_empty_folder_says_so(tmp_path):
    assert main(["report", str(tmp_path)]) == 2


@pytest.mark.slow
def test_claim_serializes_processes_and_takes_over_a_dead_holder(tmp_path):
    import os
    import platform
    import subprocess
    import sys
    import time

    from sircil.locks import claim

    target = tmp_path / "base.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pathlib import Path; from sircil.locks import claim\n"
         f"with claim(Path({str(target)!r})):\n    print('held', flush=True); import time; time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    start = time.perf_counter()
    with claim(target, poll_seconds=0.1):
        waited = time.perf_counter() - start
    holder.wait()
    assert waited > 0.5, "the second claimant did not wait for the first"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "base.pt.lock").write_text(f"{platform.node()} {dead}")
    with claim(target, poll_seconds=0.1):
        assert (tmp_path / "base.pt.lock").read_text() == f"{platform.node()} {os.getpid()}"
    assert not (tmp_path / "base.pt.lock").exists()


def test_a_lock_from_another_host_is_taken_over_once_its_heartbeat_stops(tmp_path, monkeypatch):
    """A node lost without unwinding leaves its run.lock on the shared folder; its pid means nothing
    here, so the holder's heartbeat (the lock's mtime) decides."""
    import os
    import time

    from sircil import locks
    from sircil.locks import RunInProgress, exclusive

    monkeypatch.setattr(locks, "STALE_SECONDS", 30.0)
    lock = tmp_path / "run.lock"
    lock.write_text("node-elsewhere 4242")
    with pytest.raises(RunInProgress, match="node-elsewhere 4242"):  # beating recently: alive
        with exclusive(tmp_path / "run"):
            pass
    os.utime(lock, (time.time() - 31, time.time() - 31))
    with exclusive(tmp_path / "run"):
        assert lock.read_text().split()[1] == str(os.getpid())
    assert not lock.exists()

    monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.02)  # the holder keeps its own lock fresh
    with exclusive(tmp_path / "run"):
        os.utime(lock, (time.time() - 100, time.time() - 100))
        deadline = time.time() + 10
        while time.time() - lock.stat().st_mtime > 50 and time.time() < deadline:
            time.sleep(0.02)
        assert time.time() - lock.stat().st_mtime < 50


def test_method_families_pair_each_method_with_its_sir_version():
    from sircil.report import family

    assert [family(m) for m in ("SIR_P", "SIR_D", "UCIR+SIR", "Finetune+SIR[FC]", "iCaRL", "DDE", "DDE+SIR", "WA(weight_clipping=False)")] == [
        "PODNet", "DER", "UCIR", "Finetune", "iCaRL", "UCIR", "DDE", "WA"]


def test_report_gives_the_paired_sir_difference_with_its_interval(tmp_path):
    base = {1: 50.0, 2: 55.0, 3: 47.0}
    with_sir = {1: 53.0, 2: 56.0, 3: 52.0, 4: 60.0}  # seed 4 has no partner and is left out of the pairs
    for seed, acc in base.items():
        synthetic_run(tmp_path / f"pod_{seed}", "podnet", False, 1, seed, acc, acc)
    for seed, acc in with_sir.items():
        synthetic_run(tmp_path / f"sirp_{seed}", "podnet", True, 1, seed, acc, acc)
    write_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    diffs = [3.0, 1.0, 5.0]  # mean 3, sample std 2, t(2) = 4.303: half-width 4.303 * 2 / sqrt(3) = 4.97
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)
    assert f"| SIR_P - PODNet | +3.0 [{3 - half:+.1f}, {3 + half:+.1f}] |" in report
    assert "| SIR_P - PODNet | +3.0 [-2.0, +8.0] |" in report


def test_run_states_survive_the_workers_json_reports():
    import json

    from sircil.sweep import RunState

    for state in RunState:
        assert RunState(json.loads(json.dumps({"status": state}))["status"]) is state
    assert describe({"run": "UCIR_m1_seed1993", "status": RunState.FAILED, "error": "TrainingError: non-finite loss"}) == (
        "UCIR_m1_seed1993: failed: TrainingError: non-finite loss"
    )
    assert describe({"run": "r", "status": RunState.FINISHED}) == "r: skipped (finished)"


def test_archived_grid_runs_keep_their_hashes(fashion_root):
    """The archived evidence grid is resumed by hash: every archived run's config must still hash
    to what it recorded, across option additions and changed defaults (config.FIRST_DEFAULTS)."""
    from pathlib import Path

    from sircil.config import config_from_dict

    from sircil.sweep import grid, load_sweep

    root = Path(__file__).resolve().parents[1]
    recorded = {}
    for archive, at_least in (("fashion_mnist_full", 30), ("fashion_mnist_gpu", 30), ("fashion_mnist_family", 2)):
        runs = sorted((root / "benchmarks" / "results" / archive / "runs").iterdir())
        assert len(runs) >= at_least
        for run in runs:
            raw = yaml.safe_load((run / "config.yaml").read_text())
            recorded[archive, run.name] = json.loads((run / "metrics.json").read_text())["config_hash"]
            assert config_from_dict(raw).hash() == recorded[archive, run.name], run.name
    # and the shipped sweep still builds those configs (e.g. milestones now given as fractions),
    # but for the recipes changed on purpose since, which must not be taken for the archived runs:
    # PODNet's official margin rule and unbounded scale, BiC's official validation pool (issue 23)
    spec = load_sweep(root / "configs" / "sweeps" / "fashion_mnist_full.yaml")
    changed = ("PODNet_", "SIR_P_", "BiC_")
    matched = 0
    for run in grid(spec):
        if ("fashion_mnist_full", run.name) in recorded:
            same = run.config(spec.overrides, None).hash() == recorded["fashion_mnist_full", run.name]
            assert same != run.name.startswith(changed), run.name
            matched += same
    assert matched >= 22  # all but the three iCaRL runs of the withdrawn sigmoid rule and the changed recipes' runs


def test_report_combines_folders_and_counts_a_seed_found_twice_once(tmp_path):
    """A grid continued on another machine: the same setting and seed in two archives must not be
    averaged twice; the first folder's run is kept and the report says which one was left out."""
    gpu, cpu, out = tmp_path / "gpu", tmp_path / "cpu", tmp_path / "out"
    synthetic_run(gpu / "wa_1", "wa", False, 1, 1, 40.0, 30.0)
    synthetic_run(gpu / "wa_2", "wa", False, 1, 2, 44.0, 30.0)
    synthetic_run(cpu / "wa_1", "wa", False, 1, 1, 90.0, 30.0)
    synthetic_run(cpu / "ft_1", "finetune", False, 1, 1, 35.0, 30.0)
    write_report([gpu, cpu], out)
    report = (out / "report.md").read_text()
    assert "| WA | 2 | 42.0 ± 2.8 |" in report
    assert "| Finetune | 1 | 35.0 |" in report
    assert f"Left out, a second run of the same setting and seed: {cpu / 'wa_1'} (kept: {gpu / 'wa_1'})" in report
    assert "3 finished runs" in report


def test_compare_puts_runs_side_by_side_step_by_step(tmp_path):
    from sircil.compare import write_comparison
    from sircil.report import ReportError

    for name, sir, accs in (("pod", False, [(80.0, None, 80.0, None), (50.0, 10.0, 90.0, -1.5)]),
                            ("sirp", True, [(80.0, None, 80.0, None), (56.0, 22.0, 88.0, -0.25)])):
        synthetic_run(tmp_path / name, "podnet", sir, 1, 1993, 65.0, accs[-1][0])
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics["per_step"] = [{"step": t, "accuracy": a, "accuracy_old": o, "accuracy_new": n, **({"logit_bias_old_minus_new": b} if b is not None else {})}
                               for t, (a, o, n, b) in enumerate(accs)]
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    out = write_comparison([tmp_path / "pod", tmp_path / "sirp"], tmp_path / "cmp")
    table = (out / "compare.md").read_text()
    assert "| step | acc PODNet | acc SIR_P | old PODNet | old SIR_P | new PODNet | new SIR_P | bias PODNet | bias SIR_P |" in table
    assert "| 1 | 50.0 | 56.0 | 10.0 | 22.0 | 90.0 | 88.0 | -1.50 | -0.25 |" in table
    assert "| SIR_P | 65.0 | 56.0 |" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ReportError, match="at least two"):
        write_comparison([tmp_path / "pod"], tmp_path / "cmp")
    with pytest.raises(ReportError, match="not a run folder"):
        write_comparison([tmp_path / "pod", tmp_path], tmp_path / "cmp")


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_rest_of_the_grid_still_runs(fashion_root, tmp_path, monkeypatch, capsys):
    """One bad run must not stop a grid (a GPU lease once lost half its grid to one device bug)."""
    from sircil import trainer

    real = trainer.run_experiment

    def fail_for_seed_1(cfg, folder, **kw):
        if cfg.seed == 1:
            raise RuntimeError("simulated device bug")
        return real(cfg, folder, **kw)

    monkeypatch.setattr(trainer, "run_experiment", fail_for_seed_1)
    statuses = run_sweep(write_sweep(tmp_path, overrides=IN_PROCESS), tmp_path / "out")
    failed = [s for s in statuses if s["status"] == "failed"]
    assert len(failed) == 4 and all(s["error"] == "RuntimeError: simulated device bug" for s in failed)
    assert {s["status"] for s in statuses if s not in failed} == {"ran"}
    # one line a failed run; its traceback in its folder, gone once a rerun succeeds
    assert "Traceback" not in capsys.readouterr().err
    first = failed[0]
    error_file = tmp_path / "out" / "runs" / first["run"] / "error.txt"
    assert first["traceback"] == str(error_file) and "simulated device bug" in error_file.read_text()
    assert describe(first).endswith(f"failed: RuntimeError: simulated device bug (traceback in {error_file})")
    monkeypatch.setattr(trainer, "run_experiment", real)
    reran = {s["run"]: s["status"] for s in run_sweep(write_sweep(tmp_path, overrides=IN_PROCESS), tmp_path / "out")}
    assert reran[first["run"]] in ("ran", "resumed") and not error_file.exists()
