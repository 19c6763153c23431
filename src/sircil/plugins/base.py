"""The training plug-in protocol and its registry.

A plug-in changes training without the method knowing: it builds per-step state from the step
context, adjusts the outputs the method's losses see, may add loss terms and adjust inference
outputs, records what it measured and what it applied in the step's metrics, and says what of its
config a trained base step depends on. One call, ``register_plugin(section, options)`` on its
class, makes it a plug-in: its config section is then read, validated and hashed with the rest,
its base-step cache key kept, and ``sircil report`` names its runs. The trainer holds a list of
them; a plug-in that is switched off is not built at all, so a run without it is the run without
it, bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

import torch

from ..config import Config, register_plugin_section
from ..config_sections import PluginConfig
from ..training.context import HeadSpec, StepContext
from ..training.phase import Step

Outputs = dict[str, torch.Tensor]


class TrainPlugin:
    label: ClassVar[str]  # how runs with it are named, e.g. "SIR" in "PODNet + SIR"

    def __init__(self, cfg: PluginConfig):
        self.cfg = cfg

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
        """Entries added to the record of a step with old classes, from the test logits (classes
        seen) and labels."""
        return {}

    def step_record(self, scale: float) -> dict[str, Any]:
        """Entries added to every step's record: what the plug-in applied in the step (short keys,
        listed in docs/reference.md). ``scale``: the head's learned scale after the step's training
        (1 for a head without one), to give offsets in logit units."""
        return {}

    def cache_key(self, counts: list[int]) -> Any:
        """What of this plug-in's config a trained base step depends on, given its class counts.
        By default its whole section: a base step trained with the plug-in is never shared with
        one trained without it. A plug-in that leaves the base step alone returns None."""
        return dataclasses.asdict(self.cfg)

    @classmethod
    def report_label(cls, options: dict[str, Any], defaults: dict[str, Any]) -> str:
        """What ``sircil report`` appends to the method's name for a run with this plug-in
        (``options``: its section, every option given): the label and each option changed
        from its default, so that runs differing in them are reported apart."""
        changed = "".join(f"({key}={value})" for key, value in options.items() if key != "enabled" and value != defaults.get(key))
        return f"+{cls.label}{changed}"


# config section -> plug-in class, built from its section when ``enabled``
PLUGINS: dict[str, type[TrainPlugin]] = {}
P = TypeVar("P", bound=type[TrainPlugin])


def register_plugin(section: str, options: type[PluginConfig]) -> Callable[[P], P]:
    """Makes ``section:`` of a config (read as ``options``) switch the decorated plug-in class on."""

    def add(cls: P) -> P:
        register_plugin_section(section, options)
        PLUGINS[section] = cls
        return cls

    return add


def build_plugins(cfg: Config) -> dict[str, TrainPlugin]:
    """The plug-ins the config switches on, by section, in registration order."""
    return {section: PLUGINS[section](options) for section, options in cfg.plugin_sections().items() if options.enabled}
