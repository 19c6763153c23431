"""The training plug-in protocol and its registry.

A plug-in changes training without the method knowing: it builds per-step state from the step
context, adjusts the outputs the method's losses see, may add loss terms and adjust inference
outputs, records what it measured in the step's metrics, and says what of its config a trained
base step depends on. The trainer holds a list of them; a plug-in that is switched off is not
built at all, so a run without it is the run without it, bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from ..config import Config
from ..training.context import HeadSpec, StepContext
from ..training.phase import Step

Outputs = dict[str, torch.Tensor]


class TrainPlugin:
    label: ClassVar[str]  # how runs with it are named, e.g. "SIR" in "PODNet + SIR"

    def begin_step(self, ctx: StepContext, head: HeadSpec) -> None:
        """Build the step's state; called before the model grows, so the model is the previous step's."""

    def adjust(self, out: Outputs, y: torch.Tensor) -> Outputs:
        """Training only: the outputs the method's losses see."""
        return out

    def extra_losses(self, out: Outputs, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def adjust_inference(self, out: Outputs) -> Outputs:
        """Evaluation and prediction: the outputs accuracies are read from."""
        return out

    def inference_state(self) -> dict[str, Any]:
        """What ``adjust_inference`` needs, for an exported model (built in ``begin_step``)."""
        return {}

    def load_inference_state(self, state: dict[str, Any]) -> None:
        """Restores ``inference_state`` in a plug-in built from the same config."""

    def record(self, logits: torch.Tensor, labels: torch.Tensor, step: Step) -> dict[str, Any]:
        """Entries added to the step's record, from the test logits (classes seen) and labels."""
        return {}

    def cache_key(self, counts: list[int]) -> Any:
        """What of this plug-in's config a trained base step depends on, given its class counts
        (None: nothing, so runs with and without it may share the base step)."""
        return None


# config section -> builder (None when the section switches the plug-in off)
PLUGINS: dict[str, Callable[[Config], TrainPlugin | None]] = {}


def register_plugin(section: str) -> Callable[[Callable[[Config], TrainPlugin | None]], Callable[[Config], TrainPlugin | None]]:
    def add(builder: Callable[[Config], TrainPlugin | None]) -> Callable[[Config], TrainPlugin | None]:
        PLUGINS[section] = builder
        return builder

    return add


def build_plugins(cfg: Config) -> dict[str, TrainPlugin]:
    """The plug-ins the config switches on, by section, in registration order."""
    built = {section: builder(cfg) for section, builder in PLUGINS.items()}
    return {section: plugin for section, plugin in built.items() if plugin is not None}
