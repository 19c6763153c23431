"""Weights & Biases tracking (log.wandb): one W&B run per run folder, filled by replaying the
folder's records, every epoch and step exactly once across a resume. Offline only: a recording
fake of the wandb module for the replay's logic, the real wandb in offline mode for a whole run."""

from __future__ import annotations

import json
import logging
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from sircil.config_io import ConfigError
from sircil.runfolder import RunFolder, atomic_write_json
from sircil.training import wandb_log
from sircil.training.run_log import RunLog
from sircil.training.wandb_log import STATE_FILE, WandbLog, epoch_row, final_epochs, step_row, wandb_run_id

from conftest import fashion_config, make_config

OFFLINE = {"wandb": {"mode": "offline", "group": "g", "tags": ["t"]}}


class RecordedRun:
    """What sircil did with one W&B run of the fake module."""

    def __init__(self, **init):
        self.init, self.id = init, init["id"]
        self.rows: list[dict] = []
        self.summary: dict = {}
        self.step_metrics: dict[str, str] = {}
        self.exit_code: int | None = None  # set by finish

    def log(self, row: dict) -> None:
        assert self.exit_code is None, "logged to a finished run"
        self.rows.append(row)

    def define_metric(self, name: str, step_metric: str) -> None:
        self.step_metrics[name] = step_metric

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch) -> list[RecordedRun]:
    """The wandb module replaced by a recorder; returns the runs it opened, in order."""
    runs: list[RecordedRun] = []

    def init(**kwargs) -> RecordedRun:
        runs.append(RecordedRun(**kwargs))
        return runs[-1]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, __spec__=ModuleSpec("wandb", None)))
    monkeypatch.setattr(wandb_log, "_open_run", None)
    return runs


@pytest.fixture
def isolated_wandb(monkeypatch, tmp_path):
    """The real wandb, offline, silent, writing only under tmp_path."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(wandb_log, "_open_run", None)


def epoch(step: int, number: int, loss: float, phase: str = "train") -> dict:
    return {"step": step, "phase": phase, "epoch": number, "epochs": 2, "loss": loss, "accuracy": 50.0, "lr": 0.1}


def step_record(step: int, classes_seen: int, accuracy: float) -> dict:
    return {"step": step, "classes_seen": classes_seen, "accuracy": accuracy, "accuracy_old": None if step == 0 else 40.0,
            "accuracy_new": 60.0, "sir_offset": [0.1, 0.2]}


def write_folder(folder: RunFolder, epochs: list[dict], steps: list[dict]) -> None:
    """``epochs`` appended to metrics.jsonl, and metrics.json as a run of 4 classes leaves it after ``steps``."""
    with open(folder.path / "metrics.jsonl", "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in epochs))
    accuracies = [s["accuracy"] for s in steps]
    atomic_write_json(folder.metrics_file, {
        "method": "finetune", "finished": False, "class_order": [0, 1, 2, 3], "per_step": steps,
        "average_incremental_accuracy": sum(accuracies) / len(accuracies), "last_accuracy": accuracies[-1], "forgetting": 5.0,
        "nme": {"average_incremental_accuracy": 70.0},
    })


def test_wandb_options_are_typed_checked_and_change_no_hash(fashion_root):
    cfg = make_config(fashion_config(log=OFFLINE))
    assert cfg.log.wandb.mode == "offline" and cfg.log.wandb.tags == ["t"] and cfg.log.wandb.project == "sircil"
    assert cfg.hash() == make_config(fashion_config()).hash()  # archived runs keep their hashes, wandb on or off
    assert make_config(fashion_config()).log.wandb.mode == "disabled"
    assert make_config(yaml_roundtrip(cfg)) == cfg
    with pytest.raises(ConfigError, match="did you mean log.wandb.project"):
        make_config(fashion_config(log={"wandb": {"projet": "x"}}))
    with pytest.raises(ConfigError, match="log.wandb.mode must be one of"):
        make_config(fashion_config(log={"wandb": {"mode": "on"}}))


def yaml_roundtrip(cfg) -> dict:
    import yaml

    return yaml.safe_load(cfg.to_yaml())


def test_wandb_without_the_package_is_a_clear_config_error(fashion_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: find_spec finds nothing
    with pytest.raises(ConfigError, match=r"log.wandb.mode: online needs the wandb package \(.venv/bin/pip install"):
        make_config(fashion_config(log={"wandb": {"mode": "online"}}))
    assert make_config(fashion_config()).log.wandb.mode == "disabled"  # off needs nothing


def test_only_the_main_process_of_a_run_with_wandb_on_sends(fashion_root, tmp_path):
    folder, log = RunFolder(tmp_path), logging.getLogger("test")
    assert RunLog(folder, log, make_config(fashion_config(log=OFFLINE)), is_main=True).wandb is not None
    assert RunLog(folder, log, make_config(fashion_config(log=OFFLINE)), is_main=False).wandb is None
    assert RunLog(folder, log, make_config(fashion_config()), is_main=True).wandb is None


def test_a_resumed_run_continues_one_w_and_b_history_without_repeats(fashion_root, fake_wandb, tmp_path):
    cfg = make_config(fashion_config(log=OFFLINE))
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    first_epochs = [epoch(0, 1, 2.0), epoch(0, 2, 1.5)]
    write_folder(folder, first_epochs, [step_record(0, 2, 90.0)])
    WandbLog(cfg, folder).send()
    (first,) = fake_wandb
    assert first.id == wandb_run_id(cfg.hash()) and first.init["resume"] == "allow" and first.init["mode"] == "offline"
    assert first.init["config"]["config_hash"] == cfg.hash() and first.init["config"]["log"]["wandb"]["group"] == "g"
    assert first.init["dir"] == str(folder.path) and first.init["name"] == "run"
    assert first.rows == [epoch_row(first_epochs[0], 1), epoch_row(first_epochs[1], 2), step_row(step_record(0, 2, 90.0))]
    assert first.rows[0] == {"epochs": 1, "train/step": 0, "train/epoch": 1, "train/loss": 2.0, "train/accuracy": 50.0, "train/lr": 0.1}
    assert first.rows[2] == {"eval/step": 0, "eval/classes_seen": 2, "eval/accuracy": 90.0, "eval/accuracy_new": 60.0}
    assert first.step_metrics == {"eval/*": "eval/classes_seen", "train/*": "epochs"}
    assert first.summary == {"average_incremental_accuracy": 90.0, "last_accuracy": 90.0, "forgetting": 5.0, "nme/average_incremental_accuracy": 70.0}
    assert first.exit_code is None  # steps remain

    # killed in step 1's second epoch, resumed from the checkpoint of its first: epoch 2 redone
    killed = [epoch(1, 1, 3.0), epoch(1, 2, 9.9)]
    redone = [epoch(1, 2, 2.5), epoch(1, 1, 0.7, phase="balanced")]
    write_folder(folder, killed + redone, [step_record(0, 2, 90.0), step_record(1, 4, 70.0)])
    resumed = WandbLog(cfg, folder)  # a new process: what was sent is read from the folder
    resumed.send()
    assert first.exit_code == 1  # this process's stale run, finished as failed before the resumed one opens
    second = fake_wandb[1]
    assert second.id == first.id
    final = [epoch(1, 1, 3.0), epoch(1, 2, 2.5), epoch(1, 1, 0.7, phase="balanced")]
    assert second.rows == [epoch_row(final[0], 3), epoch_row(final[1], 4), epoch_row(final[2], 5), step_row(step_record(1, 4, 70.0))]
    assert second.step_metrics["balanced/*"] == "epochs"
    assert second.summary["average_incremental_accuracy"] == 80.0 and second.summary["last_accuracy"] == 70.0
    assert second.exit_code == 0  # every class seen: the W&B run is finished
    assert json.loads((folder.path / STATE_FILE).read_text()) == {"run_id": first.id, "steps_sent": 2}
    resumed.send()
    WandbLog(cfg, folder).send()
    assert len(fake_wandb) == 2  # nothing new: no run opened, nothing sent twice


def test_final_epochs_keep_the_last_line_of_a_redone_epoch_in_its_place(tmp_path):
    lines = [epoch(0, 1, 1.0), epoch(0, 2, 2.0), epoch(0, 2, 3.0), epoch(1, 1, 4.0)]
    torn = '{"step": 1, "pha\n'  # a line a killed process left unfinished
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines) + torn)
    assert final_epochs(tmp_path / "metrics.jsonl") == {0: [lines[0], lines[2]], 1: [lines[3]]}
    assert final_epochs(tmp_path / "absent.jsonl") == {}


def offline_history(folder: Path) -> tuple[set[str], list[dict]]:
    """The run ids and the logged rows of every offline W&B run under ``folder``/wandb, in the
    order they were made, read from their .wandb files (a leveldb-style log of protobuf records)."""
    from wandb.proto.wandb_internal_pb2 import Record

    ids, rows = set(), []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:7] == b":W&B\xe1\xbe\x00", f"{path}: not a W&B data file of the known version"
        block, position, chunk = 32768, 7, b""
        while position + 7 <= len(data):
            if block - position % block < 7:  # a block's tail too short for a header is padding
                position += block - position % block
                continue
            length, kind = int.from_bytes(data[position + 4: position + 6], "little"), data[position + 6]
            chunk += data[position + 7: position + 7 + length]
            position += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = Record.FromString(chunk)
                chunk = b""
                if record.HasField("run"):
                    ids.add(record.run.run_id)
                if record.HasField("history"):
                    items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                    rows.append({k: v for k, v in items.items() if not k.startswith("_")})
    return ids, rows


@pytest.mark.slow
def test_an_offline_run_interrupted_and_resumed_logs_every_epoch_and_step_once(fashion_root, isolated_wandb, tmp_path, monkeypatch):
    from sircil.trainer import run_experiment

    cfg = make_config(fashion_config(
        data={"train_per_class": 20, "test_per_class": 10}, scenario={"base_classes": 8, "steps": 1}, model={"backbone": "resnet20"},
        memory={"per_class": 2}, train={"epochs": 3, "base_epochs": 1, "batch_size": 16, "threads": 1, "checkpoint_every": 1}, log=OFFLINE,
    ))
    out = tmp_path / "run"

    class Interrupted(Exception):
        pass

    epoch_of_run_log = RunLog.epoch

    def interrupt_in_step_1(self, record):
        epoch_of_run_log(self, record)
        if (record["step"], record["epoch"]) == (1, 2):
            raise Interrupted

    monkeypatch.setattr(RunLog, "epoch", interrupt_in_step_1)
    with pytest.raises(Interrupted):
        run_experiment(cfg, out)
    monkeypatch.setattr(RunLog, "epoch", epoch_of_run_log)
    metrics = run_experiment(cfg, out)

    epochs = final_epochs(out / "metrics.jsonl")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) > sum(map(len, epochs.values())), "the resume redid no epoch: the test would not see a repeat"
    ids, rows = offline_history(out)
    assert ids == {wandb_run_id(cfg.hash())} and len(list(out.glob("wandb/offline-run-*"))) == 2
    expected, index = [], 0
    for record in metrics["per_step"]:
        for e in epochs[record["step"]]:
            index += 1
            expected.append(epoch_row(e, index))
        expected.append(step_row(record))
    assert rows == expected
    RunFolder(out).prepare(cfg.to_yaml(), cfg.hash(), overwrite=True, require_existing=False)  # W&B's files (links too) go with the run
    assert not (out / "wandb").exists() and not (out / STATE_FILE).exists()
