"""Weights & Biases tracking (``log.wandb``): the run folder's own records, replayed into one W&B run.

The W&B run shows what the folder holds and nothing computed apart. After each step the main
process sends what the folder gained since the last send: the epochs of every step finished
since, from ``metrics.jsonl`` (of an epoch a resumed run redid, the last line, as there), then
that step's record from ``metrics.json``, whose averages (average incremental accuracy, last
accuracy, forgetting, the same under ``nme/``) become the W&B summary. Only finished steps are
sent, so an epoch is sent once, with its final numbers. ``wandb_state.json`` counts the steps
sent, and the W&B id comes from the config hash, so a resumed run reopens its W&B run and goes
on with one history, repeating no point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ..config import Config
from ..runfolder import RunFolder, atomic_write_json

STATE_FILE = "wandb_state.json"

# The W&B run this process is filling. A sircil run that stops before its last step (a failure in
# a sweep, which goes on with its next run) leaves it open: the next one to open finishes it as failed.
_open_run: Any = None


def wandb_run_id(config_hash: str) -> str:
    """The W&B id of a config's run (W&B ids may not hold / \\ # ? % :)."""
    return f"sircil-{config_hash[:16]}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def final_epochs(path: Path) -> dict[int, list[dict[str, Any]]]:
    """Each step's epoch records from ``metrics.jsonl``, in order, the last line of a (step, phase,
    epoch) in the place of its first."""
    latest: dict[tuple[int, str, int], dict[str, Any]] = {}
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line of an epoch a killed process was appending
            continue
        latest[record["step"], record["phase"], record["epoch"]] = record
    by_step: dict[int, list[dict[str, Any]]] = {}
    for record in latest.values():
        by_step.setdefault(record["step"], []).append(record)
    return by_step


def epoch_row(record: dict[str, Any], index: int) -> dict[str, Any]:
    """An epoch's W&B row: its numbers under its phase's name (``train/loss``), against ``epochs``,
    the run's epochs so far."""
    phase = record["phase"]
    numbers = {f"{phase}/{key}": value for key, value in record.items() if key != "epochs" and is_number(value)}
    return {"epochs": index, **numbers}


def step_row(record: dict[str, Any]) -> dict[str, Any]:
    """A step's W&B row: its numbers under ``eval/`` (lists, per class, and the old-class accuracies
    of the base step, which has none, are left out)."""
    return {f"eval/{key}": value for key, value in record.items() if is_number(value)}


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The averages of ``metrics.json``: its top-level numbers and those of its sections (``nme/...``)."""
    out = {key: value for key, value in metrics.items() if is_number(value)}
    for section, values in metrics.items():
        if isinstance(values, dict):
            out.update({f"{section}/{key}": value for key, value in values.items() if is_number(value)})
    return out


class WandbLog:
    """Sends a run folder's records to its W&B run; only the main process makes one."""

    def __init__(self, cfg: Config, folder: RunFolder):
        self.options, self.folder = cfg.log.wandb, folder
        config_hash = cfg.hash()
        self.config = {**cfg.to_dict(), "config_hash": config_hash}
        self.run_id = wandb_run_id(config_hash)
        self.run: Any = None  # opened by the first epoch or send: a trainer built only to evaluate opens none
        self.phases: set[str] = set()  # phases whose metrics the open run plots against ``epochs``

    @property
    def state_file(self) -> Path:
        return self.folder.path / STATE_FILE

    def steps_sent(self) -> int:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return 0
        return state["steps_sent"] if state.get("run_id") == self.run_id else 0

    def send(self) -> None:
        """Sends every step the folder finished since the last send, and the summary so far; after
        the run's last step, finishes the W&B run."""
        metrics = json.loads(self.folder.metrics_file.read_text())
        steps, sent = metrics["per_step"], self.steps_sent()
        if sent >= len(steps):
            return
        run = self.open()
        epochs = final_epochs(self.folder.epochs_file)
        index = sum(len(epochs.get(t, [])) for t in range(sent))
        for record in steps[sent:]:
            for epoch in epochs.get(record["step"], []):
                index += 1
                self.plot_phase(epoch["phase"])
                run.log(epoch_row(epoch, index))
            run.log(step_row(record))
        run.summary.update(summary(metrics))
        atomic_write_json(self.state_file, {"run_id": self.run_id, "steps_sent": len(steps)})
        if steps[-1]["classes_seen"] == len(metrics["class_order"]):  # the last step: every class is seen
            self.finish()

    def open(self) -> Any:
        global _open_run
        if self.run is not None:
            return self.run
        import wandb

        if _open_run is not None:
            _open_run.finish(exit_code=1)
        o = self.options
        mode: Literal["online", "offline"] = "offline" if o.mode == "offline" else "online"  # disabled never opens
        self.run = _open_run = wandb.init(
            project=o.project, entity=o.entity, group=o.group, tags=o.tags or None, mode=mode,
            id=self.run_id, name=self.folder.path.name, dir=str(self.folder.path), config=self.config,
            resume="allow",
            allow_val_change=True,  # a resumed run may change what its hash leaves out (threads, logging)
            reinit="create_new",  # a W&B run of the caller's own stays open and untouched
        )
        self.run.define_metric("eval/*", step_metric="eval/classes_seen")
        self.phases = set()
        return self.run

    def plot_phase(self, phase: str) -> None:
        if phase not in self.phases:
            self.run.define_metric(f"{phase}/*", step_metric="epochs")
            self.phases.add(phase)

    def finish(self) -> None:
        global _open_run
        self.run.finish()
        self.run = _open_run = None
