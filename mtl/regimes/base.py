"""What a regime is, and the registry that finds them.

A regime is one module in this package that calls `register(Regime(...))`: its name, the `regime:` keys it
reads, its plan, the shape of its result and what it needs of the experiment. The registry imports the
modules on first use (as `tasks/` finds its families), so the schema check, the planner, the runner and
the read-back all learn of a new regime from that one module. This module imports nothing above the
schema: `mtl.experiment` consults it at the door.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtl.core.config import Experiment, RegimeConfig, did_you_mean
from mtl.core.errors import ConfigError
from mtl.core.typed_yaml import Context

DEFAULT = RegimeConfig().name  # the regime of an experiment that names none
# The `regime:` keys a regime may read: RegimeConfig types them (so the schema checks their types at the door).
KEYS = tuple(f.name for f in dataclasses.fields(RegimeConfig) if f.name != "name")
BUDGET_KEYS = {"pretrain": ("pretrain_steps", "pretrain_epochs"), "finetune": ("finetune_steps", "finetune_epochs")}
# Modules of the package that are machinery, not regimes: never imported by discovery.
_MACHINERY = {"base", "checks", "planning", "report", "runner", "readback", "derive", "spread"}


@dataclass
class Stage:
    """One training run of a regime.

    `train` names the datasets each task trains on; `evaluate` the datasets evaluated at the end with
    their role ("eval": a language the stage trains on, "zero-shot": one it does not); a pre-training
    stage evaluates nothing. `reports` are the (task, dataset) pairs whose final scores are the regime's.
    """

    name: str  # within its regime: "mt", "finetune/sst2", "loo/rte/pretrain", "transfer/en+fr"
    regime: str
    budget: Literal["pretrain", "finetune"]
    train: dict[str, list[str]]
    evaluate: dict[str, dict[str, str]] = field(default_factory=dict)
    init_from: str | None = None  # key of the stage whose final weights this one starts from
    reports: list[tuple[str, str]] = field(default_factory=list)
    steps: int | None = None
    epochs: float | None = None
    qualified: bool = False  # under `compare`: the key and folder carry the regime's name
    languages: list[str] = field(default_factory=list)  # transfer: the source; leave_one_language_out: the target
    seed: int | None = None  # under `seeds:` the train.seed of this copy of the regime (key and folder say it)

    @property
    def key(self) -> str:
        """Unique in the plan; the stage's folder under the run's output_dir."""
        return _key(self.regime, self.name, self.qualified, self.seed)

    def roles(self) -> dict[str, dict[str, list[str]]]:
        """task → dataset → its roles in this stage (train, eval, zero-shot)."""
        out: dict[str, dict[str, list[str]]] = {}
        for task, names in self.train.items():
            for name in names:
                out.setdefault(task, {}).setdefault(name, []).append("train")
        for task, evals in self.evaluate.items():
            for name, role in evals.items():
                out.setdefault(task, {}).setdefault(name, []).append(role)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = {"key": self.key, **dataclasses.asdict(self)}
        if self.seed is None:  # as before `seeds:` existed, so a finished stage's digest still matches
            d.pop("seed")
        return d


def _key(regime: str, name: str, qualified: bool, seed: int | None = None) -> str:
    """A stage's name, under `compare` prefixed with its regime's (once: single/sst2 stays single/sst2), and
    under `seeds:` with its seed's folder (seed-1/single/sst2)."""
    key = f"{regime}/{name}" if qualified and not name.startswith(f"{regime}/") else name
    return key if seed is None else f"seed-{seed}/{key}"


@dataclass(frozen=True)
class TaskSets:
    """The tasks a regime's check sees: those with training data, and the supervised ones among them."""

    trains: set[str]
    supervised: set[str]
    where: tuple[str, ...]  # the key an error about the chosen regimes points at


@dataclass(frozen=True)
class Regime:
    """One regime's declaration: everything the other modules need to know of it."""

    name: str
    plan: Callable[[Any], list[Stage]]  # given a planning.Planner: its stages, in training order
    order: int  # where it is listed when no experiment says otherwise (tables read back from MLflow)
    budgets: tuple[str, ...] = ()  # which stage budgets it has: "pretrain", "finetune"
    keys: tuple[str, ...] = ()  # the other `regime:` keys it reads (targets, languages_of, …)
    shape: Literal["row", "matrix"] = "row"  # one row of a comparison, or a source × target matrix
    plain: bool = False  # on its own, one ordinary training run (regime keys would do nothing)
    check: Callable[[Experiment, Context, TaskSets], None] | None = None  # what it needs of the experiment

    @property
    def reads(self) -> set[str]:
        """Every `regime:` key this regime reads."""
        return {k for b in self.budgets for k in BUDGET_KEYS[b]} | set(self.keys)


_REGIMES: dict[str, Regime] = {}
_loaded = False


def register(regime: Regime) -> Regime:
    """Make a regime available under `regime: <name>` and in `compare:`."""
    if regime.name in _REGIMES and _REGIMES[regime.name] is not regime:
        raise ValueError(f"two regimes are registered as {regime.name!r}")
    unknown = sorted(regime.reads - set(KEYS))
    if unknown:
        raise ValueError(f"regime {regime.name!r} reads {', '.join(unknown)}: not keys of RegimeConfig")
    _REGIMES[regime.name] = regime
    return regime


def _discover() -> None:
    global _loaded
    if _loaded:
        return
    package = __name__.rpartition(".")[0]  # this module's own package, found without importing it
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_") and info.name not in _MACHINERY:
            importlib.import_module(f"{package}.{info.name}")
    _loaded = True


def regime_names() -> list[str]:
    """Every registered regime, in listing order."""
    _discover()
    return [r.name for r in sorted(_REGIMES.values(), key=lambda r: (r.order, r.name))]


def get_regime(name: str) -> Regime:
    _discover()
    if name not in _REGIMES:
        known = regime_names()
        raise ConfigError(f"unknown regime {name!r}{did_you_mean(name, known)} (known: {', '.join(known)})")
    return _REGIMES[name]


def shape_of(name: str) -> str:
    """A recorded regime's result shape; "row" for a name this version does not know (read back leniently)."""
    _discover()
    return _REGIMES[name].shape if name in _REGIMES else "row"
