"""What an experiment's launch section may say, checked when the experiment is loaded.

The launch profiles themselves live in `launch/`, the top layer; these rules sit down here because the door
check (mtl/experiment.py) must refuse a bad launch section with its line before any training starts, for every
caller of `validate` and not only the command line, and may not import from the layer that runs it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mtl.core.config import Experiment, LaunchConfig
from mtl.core.typed_yaml import Context


def check_launch(exp: Experiment, ctx: Context) -> None:
    """The DeepSpeed keys: only under profile deepspeed, and offload of parameters only with ZeRO-3."""
    la = exp.launch
    if la.profile != "deepspeed":
        for key in LaunchConfig.DEEPSPEED_ONLY:
            if getattr(la, key) not in (None, False):
                raise ctx.error(("launch", key), f"used only by launch.profile: deepspeed (the profile is "
                                f"{la.profile!r}); set the profile or remove the key")
        return
    if isinstance(la.zero_stage, bool):
        raise ctx.error(("launch", "zero_stage"), f"must be one of 1 | 2 | 3, got {la.zero_stage!r}")
    if exp.train.grad_conflict_every is not None:
        raise ctx.error(("train", "grad_conflict_every"), "not built under the deepspeed profile (ZeRO partitions "
                        "gradients or parameters and reduces them in its own backward); use single or torchrun")
    if exp.train.on_nonfinite == "skip" and la.profile == "deepspeed":
        raise ctx.error(("train", "on_nonfinite"), "skip is not built under the deepspeed profile (DeepSpeed steps "
                        "before the gradient norm is known); use stop, or fp16's own loss scaling")
    if la.offload_params and la.zero_stage != 3:
        raise ctx.error(("launch", "offload_params"), "parameters are partitioned, and so can be offloaded, only "
                        f"by ZeRO stage 3: set launch.zero_stage: 3 (it is {la.zero_stage or 'not set'})")
    if la.offload_optimizer and exp.train.grad_accum > 1 and len(exp.tasks) > 1:
        raise ctx.error(("launch", "offload_optimizer"), "with train.grad_accum > 1 and several tasks, DeepSpeed's "
                        "optimizer offload carries gradients of a head that is idle in part of a step over from "
                        "earlier steps (measured with DeepSpeed 0.19); use train.grad_accum: 1 or no offload")


def read_launch_files(exp: Experiment, ctx: Context) -> LaunchConfig:
    """The launch section with a deepspeed_config file read (a JSON object), so that the assembled experiment
    carries its content; called once `check_launch` has passed."""
    la = exp.launch
    if la.profile != "deepspeed" or not isinstance(la.deepspeed_config, str):
        return la
    return dataclasses.replace(la, deepspeed_config=_read_json_object(la.deepspeed_config, exp, ctx))


def _read_json_object(rel: str, exp: Experiment, ctx: Context) -> dict[str, Any]:
    """A JSON file named in the experiment: relative to the experiment file's folder, else the working directory."""
    import json

    path = Path(rel).expanduser()
    if not path.is_absolute():
        beside = Path(exp.source).parent / path if exp.source and not exp.source.startswith("<") else None
        path = beside if beside is not None and beside.is_file() else (Path.cwd() / path)
    where = ("launch", "deepspeed_config")
    if not path.is_file():
        raise ctx.error(where, f"file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ctx.error(where, f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (OSError, UnicodeError) as err:
        raise ctx.error(where, f"{path}: cannot be read ({err})") from None
    if not isinstance(data, dict):
        raise ctx.error(where, f"{path}: a DeepSpeed config is a JSON object, got {type(data).__name__}")
    return data

