"""What a run tells as it goes: every epoch in ``metrics.jsonl`` (and TensorBoard with
``log.tensorboard``), every step's accuracies and logit bias in the log."""

from __future__ import annotations

import logging
from typing import Any

from ..runfolder import RunFolder


class RunLog:
    def __init__(self, folder: RunFolder, log: logging.Logger, tensorboard: bool):
        self.folder, self.log, self.use_tensorboard = folder, log, tensorboard
        self.tensorboard = None  # created with the first epoch, so a resumed run appends to it

    def epoch(self, record: dict[str, Any]) -> None:
        self.folder.append_epoch(record)
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
