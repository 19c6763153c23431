"""A run's results so far: the step records and accuracy matrices, as metrics and as checkpoint state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..metrics import summarize


@dataclass
class Progress:
    has_nme: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    matrix_nme: list[list[float]] = field(default_factory=list)
    base_step_cached: bool = False

    def add(self, record: dict[str, Any], row: list[float], row_nme: list[float] | None) -> None:
        self.records.append(record)
        self.matrix.append(row)
        if row_nme is not None:
            self.matrix_nme.append(row_nme)

    def metrics(self, header: dict[str, Any], class_order: list[int], finished: bool) -> dict[str, Any]:
        """``header``: what identifies the run (method, dataset, config hash)."""
        metrics: dict[str, Any] = {
            **header,
            "finished": finished,
            "base_step_cached": self.base_step_cached,
            "class_order": class_order,
            "per_step": self.records,
            "accuracy_matrix": self.matrix,
        }
        metrics.update(summarize([r["accuracy"] for r in self.records], self.matrix))
        if self.has_nme:
            metrics["accuracy_matrix_nme"] = self.matrix_nme
            metrics["nme"] = summarize([r["accuracy_nme"] for r in self.records], self.matrix_nme)
        return metrics

    def state(self) -> dict[str, Any]:
        return {"records": self.records, "matrix": self.matrix, "matrix_nme": self.matrix_nme, "base_step_cached": self.base_step_cached}

    def restore(self, state: dict[str, Any], t: int) -> None:
        """The progress recorded by the checkpoint of step ``t``."""
        self.records = state["records"][: t + 1]
        self.matrix = state["matrix"][: t + 1]
        self.matrix_nme = state["matrix_nme"][: t + 1]
        self.base_step_cached = state["base_step_cached"]
