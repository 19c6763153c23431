"""The base-step cache key: exactly what a trained base model depends on.

Runs that differ only after the base step (memory size, later steps, SIR on equally frequent
base classes, a method's incremental options, evaluation settings) share one trained base model.
Every config field is either in the key or excluded here with its reason, and a method lists the
options of its own that act only from the first increment on (``Method.incremental_options``);
tests classify every field, so a new option cannot silently reuse a stale base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch

from ..version import __version__
from ..config import Config, milestone_epochs, non_default
from ..distributed import Distributed
from ..locks import claim
from ..runfolder import atomic_torch_save, remove_temporaries
from .phase import step_schedule

# Sections keyed whole (their non-default fields): the base step's data, network and method.
KEYED_SECTIONS = ("data", "model", "method")
# Fields keyed one by one (train.* ones as the base step resolves them: base_epochs or epochs, ...).
KEYED_FIELDS = (
    "seed", "scenario.base_classes",
    "train.epochs", "train.base_epochs", "train.lr", "train.base_lr", "train.milestones", "train.base_milestones",
    "train.batch_size", "train.momentum", "train.weight_decay", "train.base_weight_decay", "train.scheduler", "train.lr_decay",
    "train.channels_last", "train.grad_clip_value", "train.precision", "train.device",
)
EXCLUDED = {
    "cache_dir": "where the cache lives",
    "scenario.steps": "the base step trains the base classes, whatever follows",
    "memory.per_class": "the base step trains on no memory (what it withholds, BiC's pool sized by it, the trainer keys)",
    "memory.total": "the base step trains on no memory (as memory.per_class)",
    "memory.selection": "exemplars are chosen after the base step's training",
    "train.eval_batch_size": "evaluation only",
    "train.threads": "speed only",
    "train.checkpoint_every": "mid-step checkpoints only",
    "train.compile": "float rounding only (tests/test_compile.py)",
    "log.tensorboard": "what is logged",
    "log.wandb": "what is logged",
}
# Plug-in sections (sir, ...) are keyed by what each switched-on plug-in's ``cache_key`` returns: by
# default its whole section, so a new plug-in never reuses a base step trained without it.


class KeyedPlugin(Protocol):
    def cache_key(self, counts: list[int]) -> Any: ...


def base_cache_key(cfg: Config, device_type: str, counts: list[int], plugins: Mapping[str, KeyedPlugin], method: dict[str, Any]) -> dict[str, Any]:
    """``method``: the method's part, ``Method.base_step_key``."""
    tc = cfg.train
    schedule = step_schedule(tc, base=True)
    # milestones as epochs: [0.5, 0.75] of 20 epochs and [10, 15] train one base model
    schedule["milestones"] = milestone_epochs(schedule["milestones"], schedule["epochs"])
    train = {**schedule, "batch_size": tc.batch_size, "channels_last": tc.channels_last, "precision": tc.precision}
    key: dict[str, Any] = {  # options at their defaults are left out, so that a new option leaves existing keys valid
        "sircil": __version__,
        "seed": cfg.seed,
        "data": non_default(cfg.data),
        "model": non_default(cfg.model),
        "method": method,
        "base_classes": cfg.scenario.base_classes,
        "train": {k: v for k, v in train.items() if (k, v) not in (("grad_clip_value", None), ("precision", "fp32"))},
        "device": device_type,
        # "sir" is always present, as in the keys made before SIR became a plug-in, so those caches stay valid
        "sir": None,
    }
    for section, plugin in plugins.items():
        value = plugin.cache_key(counts)
        if value is not None or section == "sir":
            key[section] = value
    return key


def base_cache_path(cfg: Config, device_type: str, counts: list[int], plugins: Mapping[str, KeyedPlugin], method: dict[str, Any]) -> Path | None:
    """Cache file of the trained base model, or None without ``cache_dir``."""
    if cfg.cache_dir is None:
        return None
    key = base_cache_key(cfg, device_type, counts, plugins, method)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cfg.cache_dir) / f"base-{key['method']['name']}-{digest}.pt"


class StatefulMethod(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def cached_base_step(
    cache: Path | None, method: StatefulMethod, train: Callable[[], tuple[int, float]], dist: Distributed, log: logging.Logger
) -> tuple[tuple[int, float], bool]:
    """The base step from ``cache`` when a run with the same base-step training left it there, else
    ``train()`` and store it. Returns (images trained on, seconds) and whether it came from the cache."""
    with contextlib.ExitStack() as held:

        def lookup() -> dict[str, Any] | None:  # the claim makes a concurrent run wait for this base step, not retrain it
            if cache is None:
                return None
            held.enter_context(claim(cache, log))
            remove_temporaries(cache.parent, cache.name)  # only this entry's: others may be being written
            return torch.load(cache, map_location="cpu", weights_only=False) if cache.is_file() else None

        cached = dist.from_main(lookup)
        if cached is not None:
            method.load_state_dict(cached)
            log.info("step 0: trained base model taken from the cache %s", cache)
            return (0, 0.0), True
        seen = train()
        if cache is not None and dist.is_main:
            atomic_torch_save(cache, method.state_dict())
        return seen, False
