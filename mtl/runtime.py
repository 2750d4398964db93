"""Where this process stands in a launch, and the collectives between processes, in one place.

A `Runtime` is made once per process from the launcher's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, set
by torchrun and the `deepspeed` launcher) and handed on: to the regime runner, the trainer and its engine,
evaluation, the loss. The engine binds what only its backend knows (the device it chose, its autocast, whether
evaluation must run in lock-step) into its own copy (`Engine.runtime`).

Every collective is the identity on a single process (world 1), so code that runs everywhere needs no branch
for it. With more processes they need the process group, which the engine's backend starts (accelerate under
torchrun, `deepspeed.init_distributed` under DeepSpeed); each rank must call them in the same order.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist


def _cpu() -> torch.device:
    return torch.device("cpu")


@dataclass(frozen=True)
class Runtime:
    """One process's place in a run (rank, world size, device) and the collectives the project uses."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the process's index on its node (its GPU)
    device: torch.device = field(default_factory=_cpu)
    launched: bool = False  # started by a launcher (torchrun, deepspeed), even with one process
    lockstep_eval: bool = False  # every rank runs the same forward passes in evaluation (ZeRO-3 gathers in each)
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext  # around forward passes (bf16/fp16)

    @property
    def main(self) -> bool:
        """The process that writes files, tracks and prints (rank 0)."""
        return self.rank == 0

    # ------------------------------------------------------------------ making one
    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Runtime:
        """The runtime the launcher's variables describe; one process on the CPU where there are none."""
        env = os.environ if environ is None else environ
        return cls(
            rank=int(env.get("RANK", "0")),
            world=int(env.get("WORLD_SIZE", "1")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            launched="LOCAL_RANK" in env or "WORLD_SIZE" in env,
        )

    @classmethod
    def local(cls, device: torch.device | str | None = None) -> Runtime:
        """One process on `device` (CPU by default): evaluation or prediction of a loaded checkpoint."""
        return cls(device=torch.device(device) if device is not None else _cpu())

    def bound(self, **changes: Any) -> Runtime:
        """A copy with what a backend decided (device, autocast, lock-step evaluation, its rank)."""
        return dataclasses.replace(self, **changes)

    def joined(self) -> Runtime:
        """A copy with the rank and world size of the process group once it is started (DeepSpeed may
        have found them elsewhere than in the launcher's variables, e.g. from MPI)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        return dataclasses.replace(self, rank=dist.get_rank(), world=dist.get_world_size())

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Every process reaches this point before any goes on."""
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """The main rank's `obj` on every rank (a picklable Python object)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, tensor: torch.Tensor, op: Literal["sum", "max"] = "sum") -> torch.Tensor:
        """`tensor` summed (or its maximum taken) over ranks, in place; returned for convenience."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (every rank gets the same answer)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce(t, "max").item() > 0)

    def total(self, n: int) -> int:
        """The sum of an integer over ranks."""
        if self.world == 1:
            return n
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        return int(self.all_reduce(t).item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out
