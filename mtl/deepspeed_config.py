"""The DeepSpeed config of a run, generated from the experiment, with `launch.deepspeed_config` merged over it.

Apart from the engine that uses it, so that the rule "each setting has one home" (the experiment owns batch
sizes, accumulation, clipping, precision, the ZeRO stage, the optimiser and the schedule) reads on its own and
can be checked without starting DeepSpeed.
"""

from __future__ import annotations

import copy
from typing import Any

from mtl.core.config import Experiment
from mtl.core.errors import ConfigError

# Keys of a DeepSpeed config that the experiment owns: a deepspeed_config may repeat them, not change them.
OWNED = {
    "train_batch_size": "sampling.batch_size and train.grad_accum",
    "train_micro_batch_size_per_gpu": "sampling.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.max_grad_norm",
    "bf16.enabled": "train.precision",
    "fp16.enabled": "train.precision",
    "zero_optimization.stage": "launch.zero_stage",
}
REFUSED_SECTIONS = {
    "optimizer": "the optimiser is torch AdamW over the model's parameter groups (train.encoder_lr, head_lr, mix_lr, "
    "weight_decay)",
    "scheduler": "the schedule is the experiment's (train.schedule, train.warmup)",
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a nested config (`zero_optimization.stage`), None where it is absent."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def deepspeed_config(exp: Experiment, world: int) -> dict[str, Any]:
    """The DeepSpeed config of a run: generated from the experiment, with launch.deepspeed_config merged
    over it. Settings the experiment owns (batch sizes, accumulation, clipping, precision, stage) and
    the optimizer and scheduler sections are refused there unless they agree, so each has one home."""
    la, t = exp.launch, exp.train
    user = la.deepspeed_config or {}
    micro = max(1, exp.sampling.batch_size // world)
    stage = la.zero_stage or config_value(user, "zero_optimization.stage") or 2
    zero: dict[str, Any] = {"stage": stage}
    if la.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if la.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    generated = {
        "train_batch_size": micro * t.grad_accum * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": float(t.max_grad_norm),
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "zero_optimization": zero,
        # the optimiser is torch's AdamW (a subclass that skips idle heads), also when offloaded to the CPU
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # mtl logs the training figures itself
    }
    where = "launch.deepspeed_config"
    for section, why in REFUSED_SECTIONS.items():
        if section in user:
            raise ConfigError(f"{where}: {section!r} is not taken: {why}; remove the section")
    for key, owner in OWNED.items():
        mine, theirs = config_value(generated, key), config_value(user, key)
        if theirs is not None and theirs != mine and not (key == "zero_optimization.stage" and la.zero_stage is None):
            raise ConfigError(f"{where}: {key} = {theirs!r} differs from {mine!r}, which the experiment sets; "
                              f"set {owner} instead (or leave {key} out)")
    merged = _merge(generated, user)
    stage = config_value(merged, "zero_optimization.stage")
    if stage not in (1, 2, 3) or isinstance(stage, bool):
        raise ConfigError(f"{where}: zero_optimization.stage must be 1, 2 or 3 under the deepspeed profile, "
                          f"got {stage!r}")
    if config_value(merged, "zero_optimization.offload_param.device") not in (None, "none") and stage != 3:
        raise ConfigError(f"{where}: zero_optimization.offload_param needs ZeRO stage 3 (the stage is {stage})")
    return merged
