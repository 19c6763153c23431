"""Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

The prior correction from the step's class counts alone: z~_k = z_k + tau log(n_k / n_max)
on the logits the method's classification loss sees ("loss" mode; tau = 1 is the balanced
softmax of Ren et al. 2020), or z_k - tau log(n_k / n_max) at inference after ordinary
training ("post_hoc" mode). log(n_k / n_max) differs from the paper's log prior log(n_k / N)
by one constant per sample, which a softmax ignores; with it, equally frequent classes get no
offset on any head. It is SIR's frequency compensation without chronological attenuation,
inheritance transfer or SIR's per-head units: the natural ablation of SIR.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config_sections import LogitAdjustmentConfig
from ..training.context import HeadSpec, StepContext
from .base import Outputs, TrainPlugin, register_plugin
from .sir import frequency_margins


@register_plugin("logit_adjustment", LogitAdjustmentConfig)
class LogitAdjustment(TrainPlugin):
    label = "LA"
    cfg: LogitAdjustmentConfig

    def __init__(self, cfg: LogitAdjustmentConfig):
        super().__init__(cfg)
        self.head = HeadSpec()
        self.offset: torch.Tensor | None = None

    def begin_step(self, ctx: StepContext, head: HeadSpec) -> None:
        self.head = head
        self.offset = self.cfg.tau * frequency_margins(ctx.class_counts())
        ctx.log.info("logit adjustment (%s): offsets %s", self.cfg.mode, [round(v, 3) for v in self.offset.tolist()])

    def adjust(self, out: Outputs, y: torch.Tensor) -> Outputs:
        if self.cfg.mode == "loss":
            assert self.offset is not None, "begin_step sets the step's offsets"
            logits = out[self.head.logits]
            out[self.head.logits] = logits + self.offset.to(logits.dtype)
        return out

    def adjust_inference(self, out: Outputs) -> Outputs:
        if self.cfg.mode == "post_hoc":
            assert self.offset is not None, "begin_step or load_inference_state sets the offsets"
            logits = out["logits"]
            # classes beyond the step's (a model evaluated on fewer classes) keep their logits
            out["logits"] = torch.cat([logits[:, : self.offset.numel()] - self.offset.to(logits.dtype), logits[:, self.offset.numel():]], 1)
        return out

    def inference_state(self) -> dict[str, Any]:
        if self.cfg.mode != "post_hoc":
            return {}
        assert self.offset is not None, "begin_step sets the step's offsets"
        return {"offset": self.offset.cpu()}

    def load_inference_state(self, state: dict[str, Any]) -> None:
        if "offset" in state:
            self.offset = state["offset"]

    def step_record(self, scale: float) -> dict[str, Any]:
        """``la_offset``: each class's offset added to the logits, tau log(n_k / n_max) to the training
        logits in "loss" mode, its negative to the test logits in "post_hoc" mode."""
        sign = 1.0 if self.cfg.mode == "loss" else -1.0
        assert self.offset is not None, "begin_step sets the step's offsets"
        return {"la_offset": (sign * self.offset).tolist()}

    def cache_key(self, counts: list[int]) -> Any:
        trains_differently = self.cfg.mode == "loss" and len(set(counts)) > 1
        return dataclasses.asdict(self.cfg) if trains_differently else None

    @classmethod
    def report_label(cls, options: dict[str, Any], defaults: dict[str, Any]) -> str:
        """``+LA``, ``(post-hoc)`` in that mode, ``(tau 0.5)`` for another tau: the names of the archived reports."""
        return "+LA" + ("(post-hoc)" if options["mode"] == "post_hoc" else "") + (f"(tau {options['tau']:g})" if options["tau"] != 1.0 else "")
