"""Training regimes: which stages an experiment trains, in which order, each from which weights.

A regime is one module of this package that registers its declaration (mtl/regimes/base.py: its name, the
`regime:` keys it reads, its plan, its result shape). The machinery is one module per concern: planning.py
(the stage graph), checks.py (the keys at the door), derive.py (a stage's experiment, its digests, the
stages trained once for several), runner.py (training the stages with MLflow), report.py (rows, matrices
and their tables), spread.py (the same over seeds) and readback.py (the tables from MLflow alone). This package
re-exports what callers use (`regimes.plan`, `regimes.run`, …); the runner and the read-back load on first
use, so planning (the dry run) and the door checks load no tracking and no training loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mtl.regimes.base import Regime, get_regime, regime_names, register
from mtl.regimes.planning import ZERO_SHOT_MARK, Planner, Stage, describe, is_plain, plan, plan_regime, regimes_of

if TYPE_CHECKING:  # the report's names reach type checkers through the module __getattr__ (Any)
    from mtl.regimes.derive import stage_experiment
    from mtl.regimes.readback import recorded_table
    from mtl.regimes.runner import DONE_FILE, STATE_FILE, run
    from mtl.tracking import default_run_name

_LAZY = {
    **dict.fromkeys(("recorded_table",), "mtl.regimes.readback"),
    **dict.fromkeys(("Matrix", "RegimeOutcome", "Row", "StageResult", "matrix_csv", "matrix_markdown", "matrix_text",
                     "regime_row", "stages_text", "table_csv", "table_markdown", "table_text", "transfer_matrix"),
                    "mtl.regimes.report"),
    **dict.fromkeys(("DONE_FILE", "STATE_FILE", "run"), "mtl.regimes.runner"),
    "stage_experiment": "mtl.regimes.derive",
    "default_run_name": "mtl.tracking",
}


def __getattr__(name: str) -> Any:
    """The runner's, the report's and the read-back's names, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [  # what callers use as `regimes.<name>`; the lazy ones are listed in _LAZY too
    "DONE_FILE", "STATE_FILE", "ZERO_SHOT_MARK", "Matrix", "Planner", "Regime", "RegimeOutcome", "Row", "Stage",
    "StageResult", "default_run_name", "describe", "get_regime", "is_plain", "matrix_csv", "matrix_markdown",
    "matrix_text", "plan", "plan_regime", "recorded_table", "regime_names", "regime_row", "regimes_of", "register",
    "run", "stage_experiment", "stages_text", "table_csv", "table_markdown", "table_text", "transfer_matrix",
]
