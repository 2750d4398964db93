"""What differs between launch profiles inside one training step, behind one small interface.

The trainer's loop is the same for every profile; it asks an engine to run a micro-batch's
backward pass, to take the optimiser step (clipping, scheduler, zeroing), to save and load
states. `AccelerateEngine` serves the single-process and torchrun/DDP profiles; `DeepSpeedEngine`
the deepspeed profile (ZeRO 1, 2, 3), through `deepspeed.initialize` directly, since accelerate's
DeepSpeed plugin does not run on CPU.

Every checkpoint holds the whole model in fp32 (`model.pt`) and the optimiser state in plain
torch AdamW form (`optimizer.pt`), whatever the profile; the deepspeed profile adds its ZeRO
shards, which it reloads when it resumes with the same stage, world size, precision and offload
(`layout()`). So `mtl evaluate`
and `mtl predict` read any checkpoint on one process without DeepSpeed, and a run can resume
under another profile.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtl.checkpoint import ZERO_SHARDS
from mtl.core.config import Experiment
from mtl.deepspeed_config import config_value, deepspeed_config
from mtl.runtime import Runtime

SHARDS = ZERO_SHARDS  # the sub-folder of a checkpoint holding DeepSpeed's ZeRO shards (the layout's name)


def make_optimizer(groups: list[dict], cls: type[torch.optim.Optimizer] = torch.optim.AdamW) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the kernel: on CPU the per-tensor loop over a large
    embedding table costs about ten times the fused update."""
    try:
        return cls(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(groups)


class Engine:
    """The single-process engine's defaults; subclasses override what their profile does differently.

    Rank, world size, device, autocast and the collectives are the runtime's (`self.runtime`, bound by the
    engine to what its backend chose); the properties below read them for the trainer's convenience."""

    runtime: Runtime = Runtime()
    config: dict[str, Any] | None = None  # the DeepSpeed config in force, for the record
    optimizer: Any = None
    scheduler: Any = None

    @property
    def rank(self) -> int:
        return self.runtime.rank

    @property
    def world(self) -> int:
        return self.runtime.world

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def main(self) -> bool:
        return self.runtime.main

    @property
    def lockstep_eval(self) -> bool:
        """Every rank must run the same forward passes in evaluation (ZeRO-3)."""
        return self.runtime.lockstep_eval

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return make_optimizer(groups)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> nn.Module:
        raise NotImplementedError

    def micro_step(self, last: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward pass; `last`: the step's last micro-batch."""
        return self.runtime.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, skip_nonfinite: bool = False, skip: bool = False) -> float | None:
        """Clip, step the optimiser and the scheduler, and clear the gradients; returns the gradient norm
        (before clipping; None where it is not known). With `skip`, or `skip_nonfinite` and a non-finite
        norm, the gradients are cleared without a step (not built under DeepSpeed)."""
        raise NotImplementedError

    def autocast(self) -> AbstractContextManager:
        return self.runtime.autocast()

    def unwrap(self) -> nn.Module:
        raise NotImplementedError

    def barrier(self) -> None:
        self.runtime.barrier()

    def broadcast(self, obj: Any) -> Any:
        """The main rank's `obj` on every rank."""
        return self.runtime.broadcast(obj)

    @contextmanager
    def main_process_first(self) -> Iterator[None]:
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def gathered(self, params: Iterable[nn.Parameter]) -> AbstractContextManager:
        """Parameters readable in full inside the block (ZeRO-3 partitions them; every rank must enter)."""
        return nullcontext()

    # ------------------------------------------------------------------ states
    def layout(self) -> dict[str, Any]:
        """What a checkpoint's sharded states depend on (recorded in trainer_state.json)."""
        return {"profile": "accelerate", "world_size": self.world}

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The whole model in fp32 on the main rank (None elsewhere); every rank must call it."""
        return self.unwrap().state_dict() if self.main else None

    def optimizer_state(self) -> dict[str, Any] | None:
        """The optimiser state in torch AdamW form on the main rank (None elsewhere); every rank must call it."""
        return self.optimizer.state_dict() if self.main else None

    def load_states(self, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        """Take the optimiser state of a checkpoint (the weights were loaded before `prepare`)."""
        self.optimizer.load_state_dict(optimizer_state)

    def save_shards(self, folder: Path) -> None:
        """Write this rank's part of sharded states into `folder` (a checkpoint being written)."""

    def can_load_shards(self, folder: Path, layout: dict[str, Any] | None) -> bool:
        return False

    def load_shards(self, folder: Path) -> None:
        raise NotImplementedError


def make_accelerator(exp: Experiment) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[exp.train.precision]
    cpu = exp.launch.cpu or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        # Heads of tasks absent from a step receive no gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


class AccelerateEngine(Engine):
    """Single process and torchrun/DDP, through accelerate (autocast for bf16/fp16, no_sync while accumulating)."""

    def __init__(self, exp: Experiment, accelerator: Any, runtime: Runtime):
        self.acc = accelerator
        self.runtime = runtime.bound(rank=accelerator.process_index, world=accelerator.num_processes,
                                     device=accelerator.device, autocast=accelerator.autocast)
        self.accum = exp.train.grad_accum
        self.max_grad_norm = exp.train.max_grad_norm

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> nn.Module:
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.scheduler = scheduler
        return self.model

    def micro_step(self, last: bool) -> AbstractContextManager:
        stack = ExitStack()
        if not last and self.world > 1:
            stack.enter_context(self.acc.no_sync(self.model))
        stack.enter_context(self.acc.autocast())
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss / self.accum)

    def step(self, skip_nonfinite: bool = False, skip: bool = False) -> float | None:
        clip = self.max_grad_norm if self.max_grad_norm and self.max_grad_norm > 0 else float("inf")
        norm = float(self.acc.clip_grad_norm_(self.model.parameters(), clip))  # gradients are synced: every rank
        if not (skip or (skip_nonfinite and not math.isfinite(norm))):      # sees the same norm
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def unwrap(self) -> nn.Module:
        return self.acc.unwrap_model(self.model)


# --------------------------------------------------------------------------- DeepSpeed


class IdleAwareAdamW(torch.optim.AdamW):
    """torch AdamW that skips parameter groups marked idle.

    ZeRO flattens each parameter group into one tensor, so a head that got no gradient in a step
    (its task was not drawn) would see a zero gradient, and AdamW would still decay it and move it
    on its momentum; the engine marks such groups so that they are left as torch leaves a parameter
    without a gradient: untouched, state and step count included."""

    def step(self, closure: Any = None) -> Any:
        held = []
        for group in self.param_groups:
            if group.get("idle"):
                for p in group["params"]:
                    held.append((p, p.grad))
                    p.grad = None
        try:
            return super().step(closure)
        finally:
            for p, grad in held:
                p.grad = grad


class DeepSpeedEngine(Engine):
    """ZeRO 1, 2 or 3 through `deepspeed.initialize`; device and backend follow DeepSpeed's accelerator
    (NCCL on GPUs, gloo on CPU)."""

    def __init__(self, exp: Experiment, runtime: Runtime):
        if exp.launch.cpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        # DeepSpeed 0.19 calls torch.distributed functions that torch 2.13 marks deprecated, at every step
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed\.\w+` is deprecated")
        deepspeed.init_distributed()
        joined = runtime.joined()  # the rank and world size of DeepSpeed's process group
        device = joined.device
        accelerator = get_accelerator()
        if accelerator.device_name() != "cpu":
            accelerator.set_device(joined.local_rank)
            device = torch.device(accelerator.device_name(joined.local_rank))
        self.exp = exp
        self.config = deepspeed_config(exp, joined.world)
        self.stage = int(self.config["zero_optimization"]["stage"])
        # precision is DeepSpeed's (no autocast); ZeRO-3 gathers parameters in every forward pass
        self.runtime = joined.bound(device=device, autocast=nullcontext, lockstep_eval=self.stage == 3)
        self._active: set[str] = set()
        self._last = True

    def make_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        return make_optimizer(groups, IdleAwareAdamW)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> nn.Module:
        import deepspeed

        self.optimizer, self.scheduler = optimizer, scheduler
        # ZeRO replaces each group's parameters by a flat partition; the model's own parameters are kept here
        self.groups = [list(g["params"]) for g in optimizer.param_groups]
        self.module = model
        model.register_forward_pre_hook(self._record_task)
        self.engine, self.zero, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        return self.engine

    def _record_task(self, module: nn.Module, args: tuple) -> None:
        if module.training and torch.is_grad_enabled() and args:
            self._active.add(args[0])

    def micro_step(self, last: bool) -> AbstractContextManager:
        self._last = last
        return nullcontext()  # precision is DeepSpeed's (bf16/fp16 weights with fp32 master copies)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scaled by 1 / gradient_accumulation_steps inside
        if not self._last:
            self.engine.step()  # DeepSpeed counts micro-batches here; the optimiser steps at the boundary

    def step(self, skip_nonfinite: bool = False, skip: bool = False) -> float | None:
        from deepspeed.utils import safe_set_local_grad

        for group, params in zip(self.optimizer.param_groups, self.groups):
            group["idle"] = group.get("task") is not None and group["task"] not in self._active
            if group["idle"] and self.stage == 3:
                # ZeRO-3 keeps a gradient partition per parameter and fills it only for parameters that took
                # part; an idle head's partition is zeroed, so clipping counts no gradient of an earlier step
                for p in params:
                    safe_set_local_grad(p, torch.zeros(p.ds_tensor.numel(), device=p.ds_tensor.device))
        self.engine.step()  # clipping, optimiser, gradients cleared
        if self.engine.was_step_applied():  # an fp16 overflow skips the step and so the schedule
            self.scheduler.step()
        if self.stage == 3:
            # a head used only in a later micro-batch of the next step adds to its partition: start from zero
            self.zero.grad_partitions_flat_buffer.zero_()
        self._active.clear()
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def unwrap(self) -> nn.Module:
        return self.module

    def gathered(self, params: Iterable[nn.Parameter]) -> AbstractContextManager:
        if self.stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params))

    # ------------------------------------------------------------------ states
    def layout(self) -> dict[str, Any]:
        def offloaded(key: str) -> bool:
            return config_value(self.config, f"zero_optimization.{key}.device") not in (None, "none")

        return {"profile": "deepspeed", "world_size": self.world, "zero_stage": self.stage,
                "precision": self.exp.train.precision, "offload_optimizer": offloaded("offload_optimizer"),
                "offload_params": offloaded("offload_param")}

    def model_state(self) -> dict[str, torch.Tensor] | None:
        from deepspeed.utils import safe_get_full_fp32_param

        out: dict[str, torch.Tensor] = {}
        for name, value in self.module.state_dict(keep_vars=True).items():
            full = safe_get_full_fp32_param(value) if isinstance(value, nn.Parameter) else None
            if full is None:  # a buffer, or a parameter outside the optimiser
                with self.gathered([value] if isinstance(value, nn.Parameter) else []):
                    full = value.detach().clone()
            if self.main:  # fp32 as every profile writes it, whatever DeepSpeed cast the module to
                out[name] = full.detach().to("cpu", torch.float32 if full.is_floating_point() else None, copy=True)
        return out if self.main else None

    def _flats(self, group: int) -> list[torch.Tensor]:
        """The flat fp32 partitions ZeRO steps for one parameter group on this rank."""
        if self.stage == 3:
            z = self.zero
            return [z.fp32_partitioned_groups_flat[s] for s, g in sorted(z.sub_group_to_group_id.items()) if g == group]
        return [self.zero.single_partition_of_fp32_groups[group]]

    def _group_step(self, group: int) -> float | None:
        """How many steps AdamW has taken for a group (None: never; its task has not been drawn yet)."""
        state = self.zero.optimizer.state.get(self._flats(group)[0])
        return float(state["step"]) if state else None

    def _link(self, group: int) -> None:
        """ZeRO-1/2 link each parameter to its slice of the optimiser state once, at the first step; a
        group whose state was created later (a head first drawn after step 1) is linked here."""
        if self.stage != 3:
            from deepspeed.utils import lazy_init_hp_params_optimizer_state

            flat = self._flats(group)[0]
            lazy_init_hp_params_optimizer_state(self.zero.bit16_groups[group], flat, self.zero.optimizer.state)

    def optimizer_state(self) -> dict[str, Any] | None:
        from deepspeed.utils import safe_get_full_optimizer_state

        state: dict[int, dict[str, torch.Tensor]] = {}
        param_groups = []
        index = 0
        for g, (group, params) in enumerate(zip(self.optimizer.param_groups, self.groups)):
            step = self._group_step(g)
            if step is not None:
                self._link(g)
                flat = self._flats(g)[0]
                keys = [k for k, v in self.zero.optimizer.state[flat].items() if torch.is_tensor(v) and k != "step"]
            for i, p in enumerate(params):
                if step is None:
                    continue
                entry = {"step": torch.tensor(step, dtype=torch.float32)}
                for key in keys:
                    full = safe_get_full_optimizer_state(p, key)
                    if self.main:
                        entry[key] = full.detach().to("cpu", copy=True)
                state[index + i] = entry
            param_groups.append({**{k: v for k, v in group.items() if k not in ("params", "idle")},
                                 "params": list(range(index, index + len(params)))})
            index += len(params)
        return {"state": state, "param_groups": param_groups} if self.main else None

    def load_states(self, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
        """A checkpoint of any profile: fp32 master weights (exact under bf16) and AdamW's moments and steps."""
        saved = optimizer_state["param_groups"]
        if [len(g["params"]) for g in saved] != [len(ps) for ps in self.groups]:
            raise ValueError("the saved optimizer's parameter groups differ from this model's")
        names = {id(p): n for n, p in self.module.named_parameters()}
        for params in self.groups:
            for p in params:
                self._set_full(p, model_state[names[id(p)]], None)
        for g, (group, old, params) in enumerate(zip(self.optimizer.param_groups, saved, self.groups)):
            group.update({k: v for k, v in old.items() if k != "params"})
            entries = [optimizer_state["state"].get(i) for i in old["params"]]
            if not any(entries):
                continue  # this group has not stepped yet
            steps = {float(e["step"]) for e in entries if e}
            if None in entries or len(steps) > 1:
                raise ValueError(f"parameter group {g} ({group.get('name')}) has parameters at different steps")
            step, keys = steps.pop(), [k for k in entries[0] if k != "step"]
            for flat in self._flats(g):  # AdamW's state as its first step creates it, then filled in below
                on = flat.device if group.get("fused") or group.get("capturable") else torch.device("cpu")
                self.zero.optimizer.state[flat] = {"step": torch.tensor(step, dtype=torch.float32, device=on),
                                                   **{k: torch.zeros_like(flat) for k in keys}}
            self._link(g)
            for p, entry in zip(params, entries):
                for key in keys:
                    self._set_full(p, entry[key], key)

    def _set_full(self, p: nn.Parameter, value: torch.Tensor, key: str | None) -> None:
        """This rank's part of a full fp32 value (key None) or optimiser state of one parameter."""
        from deepspeed.utils import (
            safe_set_full_fp32_param,
            safe_set_full_optimizer_state,
            safe_set_local_fp32_param,
            safe_set_local_optimizer_state,
        )

        value = value.to(self.device, torch.float32).flatten()
        if self.stage == 3:  # ZeRO-3's own full setters cut the last rank's padded partition out of range
            size = p.ds_tensor.numel()
            part = torch.nn.functional.pad(value, (0, size * self.world - value.numel()))[size * self.rank :][:size]
            if key is None:
                safe_set_local_fp32_param(p, part)
            else:
                safe_set_local_optimizer_state(p, part, key)
        elif key is None:
            safe_set_full_fp32_param(p, value)
        else:
            safe_set_full_optimizer_state(p, value, key)

    def save_shards(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=SHARDS, save_latest=False)

    def can_load_shards(self, folder: Path, layout: dict[str, Any] | None) -> bool:
        return layout == self.layout() and (folder / SHARDS).is_dir()

    def load_shards(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=SHARDS, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"DeepSpeed could not load the ZeRO shards in {folder / SHARDS}")


def make_engine(exp: Experiment, runtime: Runtime | None = None) -> Engine:
    """The engine of the experiment's launch profile, for this process (`runtime`: as the launcher made it)."""
    runtime = runtime or Runtime.from_environment()
    if exp.launch.profile == "deepspeed":
        return DeepSpeedEngine(exp, runtime)
    return AccelerateEngine(exp, make_accelerator(exp), runtime)
