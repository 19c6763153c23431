"""What a run tells as it goes: every epoch in ``metrics.jsonl`` (and TensorBoard with
``log.tensorboard``), every step's accuracies and logit bias in the log, and, with ``log.wandb``,
the run folder's records in a W&B run after each step (wandb_log.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..runfolder import RunFolder
from .wandb_log import WandbLog

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class RunLog:
    def __init__(self, folder: RunFolder, log: logging.Logger, cfg: Config, is_main: bool):
        """``is_main``: the process that writes the run folder (the others send nothing to W&B)."""
        self.folder, self.log, self.use_tensorboard = folder, log, cfg.log.tensorboard
        self.tensorboard: SummaryWriter | None = None  # created with the first epoch, so a resumed run appends to it
        self.wandb = WandbLog(cfg, folder) if is_main and cfg.log.wandb.mode != "disabled" else None

    def epoch(self, record: dict[str, Any]) -> None:
        self.folder.append_epoch(record)
        if self.wandb is not None:  # opened at the first epoch, so that a W&B problem (no login) stops the run early
            self.wandb.open()
        if not self.use_tensorboard:
            return
        if self.tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.folder.path / "tensorboard"))
        prefix = f"step_{record['step']}/{record['phase']}"
        for key, value in record.items():
            if key not in ("step", "phase", "epoch", "epochs"):
                self.tensorboard.add_scalar(f"{prefix}/{key}", value, record["epoch"])
        self.tensorboard.flush()

    def step(self, record: dict[str, Any]) -> None:
        """After the step's metrics.json is written."""
        t, old, nme = record["step"], record["accuracy_old"], record.get("accuracy_nme")
        self.log.info(
            "step %d: accuracy %.2f (old %s, new %.2f)%s, %d classes seen",
            t, record["accuracy"], "-" if old is None else f"{old:.2f}", record["accuracy_new"],
            f", NME {nme:.2f}" if nme is not None else "", record["classes_seen"],
        )
        if "logit_bias_old_minus_new" in record:
            self.log.info(
                "step %d: mean test logit old %.3f / new %.3f, bias old - new %.3f at inference",
                t, record["mean_logit_old"], record["mean_logit_new"], record["logit_bias_old_minus_new"],
            )
        if self.wandb is not None:
            self.wandb.send()
