"""Putting a checkpoint's weights into a model: the one load behind resuming, starting a stage from another
stage's weights, and evaluation or prediction, so that all three agree on which tensors must match and say
the same clear thing, naming the checkpoint folder, when they do not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mtl.checkpoint import Checkpoint, weights
from mtl.core.errors import ConfigError

HEADS = "heads."  # a task's head (its scalar mix included) lives under heads.<task>. in the model's state


class WeightsMismatch(ConfigError):
    """A checkpoint whose weights do not fit the model the experiment builds (a head or encoder changed since
    it was trained, or another experiment's checkpoint); `detail` says which tensors, on one line."""

    def __init__(self, found: Checkpoint, detail: str):
        self.path = found.path
        self.detail = detail
        super().__init__(f"{found.path}: the checkpoint's weights do not fit the model this experiment builds "
                         f"({detail})")


@dataclass
class LoadedWeights:
    """What a load did. `state` is model.pt as read (resuming hands it on to the engine with the optimiser's)."""

    state: dict[str, torch.Tensor]
    new: list[str] = field(default_factory=list)  # the model's tensors the checkpoint lacks: left as built
    unused: list[str] = field(default_factory=list)  # the checkpoint's tensors the model lacks: left out


def task_of(key: str) -> str | None:
    """The task whose head a state key belongs to; None for the shared encoder."""
    return key[len(HEADS):].split(".", 1)[0] if key.startswith(HEADS) else None


def _some(keys: Sequence[str], most: int = 3) -> str:
    more = f" (+{len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], strict_heads: bool) -> str | None:
    """Why `state` cannot be loaded into a model whose state is `own` (None: it can).

    Every tensor present in both must have the same shape. strict_heads: the two hold the same tensors (a
    resumed run, a trained model evaluated). Otherwise (a stage starting from another's weights) only the
    encoder must be whole: a head the checkpoint lacks keeps its fresh initialisation, and the heads of tasks
    this experiment leaves out are left behind."""
    missing = [k for k in own if k not in state and (strict_heads or task_of(k) is None)]
    extra = [k for k in state if k not in own] if strict_heads else []
    shapes = [f"{k} is {tuple(state[k].shape)} there, {tuple(own[k].shape)} here"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{what}: {_some(keys)}" for what, keys in
                (("shapes differ", shapes), ("not in the checkpoint", missing), ("not in the model", extra)) if keys]
    return "; ".join(problems) or None


def load_weights(model: torch.nn.Module, found: Checkpoint, *, strict_heads: bool = True,
                 verify: bool = True) -> LoadedWeights:
    """Load `found`'s model.pt into `model` (on the CPU, before any engine wraps it), or raise WeightsMismatch
    naming the folder. strict_heads: see `mismatch`. verify: check model.pt against the checkpoint's manifest
    first (False where the caller has just checked every file: resume_point, check_loadable)."""
    state = weights(found) if verify else found.load("model.pt", weights_only=True)
    own = model.state_dict()
    problem = mismatch(own, state, strict_heads)
    if problem is not None:
        raise WeightsMismatch(found, problem)
    model.load_state_dict(state, strict=strict_heads)
    return LoadedWeights(state, new=[k for k in own if k not in state], unused=[k for k in state if k not in own])
