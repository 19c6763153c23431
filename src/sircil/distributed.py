"""Data-parallel training under ``torchrun``: one process per device, PyTorch's own DDP.

Every rank holds the whole dataset on its device and the same model. Each global batch
of ``train.batch_size`` images is split across the ranks (rank r takes every world-th
sample), DistributedDataParallel averages the gradients, so the optimizer steps agree.
Everything that must be identical everywhere and is cheap next to training (memory
selection, evaluation, loading checkpoints and caches) is done once on rank 0 and
broadcast; only rank 0 writes to the run folder. Without ``torchrun`` (or with one
process) :data:`SINGLE` makes every helper a no-op, so the single-process path is
the plain one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from .runfolder import RunFolderError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` computed on rank 0 only and broadcast (as CPU tensors) to every rank. An
        exception raised on rank 0 is re-raised on every rank, so no rank waits forever."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", to_cpu(fn()))
            except BaseException as exc:  # noqa: BLE001  (travels to the other ranks, then re-raised)
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise value
        return value

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a copy); one collective, so call it once per epoch, not per batch."""
        if not self.enabled:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def sync_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere: BatchNorm statistics drift apart
        during training, since each rank normalizes its own shard of the batch."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel (gradient averaging overlapped with the backward)."""
        if not self.enabled:
            return module
        device_ids = [module_device(module).index] if module_device(module).type == "cuda" else None
        # A phase may train part of the model (a classifier-only phase leaves the backbone
        # without gradients), so parameters unused in a batch must not stall the reduction.
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch: every world-th sample from the rank-th."""
        return batch[self.rank:: self.world] if self.enabled else batch

    def device(self, requested: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK when training on CUDA."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested


SINGLE = Distributed()


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def from_environment(cuda: bool) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment (NCCL on CUDA, gloo on
    CPU); :data:`SINGLE` when not launched by ``torchrun`` or launched with one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
    return Distributed(rank=rank, world=world, local_rank=local_rank)


def to_cpu(value: Any) -> Any:
    """Tensors, also inside dicts, lists and tuples, moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a device; ``auto`` is CUDA where available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunFolderError(f"train.device={name} but CUDA is not available here; use --set train.device=cpu or auto")
    return device
