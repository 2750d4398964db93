"""Helpers shared by the benchmark scripts: paths, one fresh process per measured run, peak memory, tables.

Each configuration runs in its own Python process, so its peak resident memory is its own
and no warm cache (allocator pools, imported modules, tokenised data) carries over to the next.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
CHILD_FLAG = "--child"


def offline_env(hf_home: Path) -> dict[str, str]:
    """Environment for measured runs: no hub access, no tokenizer threads competing with torch, caches kept apart.

    OpenMP threads sleep rather than spin while waiting (unless OMP_WAIT_POLICY is already set): on a CPU
    shared with other jobs, spinning threads that get descheduled made a training step up to 7× slower.
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HOME": str(hf_home),
            "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        }
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def apply_offline_env(hf_home: Path) -> None:
    """The same environment, for runs made inside this process (smoke mode)."""
    os.environ.update({k: v for k, v in offline_env(hf_home).items() if k != "PYTHONPATH"})


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fresh(
    script: Path, spec: dict[str, Any], workdir: Path, name: str, env: dict[str, str], reuse: bool = False
) -> dict[str, Any]:
    """Run `script --child SPEC` in a new interpreter and return the JSON result it writes.

    The child's own output goes to `<workdir>/<name>.log`; a failure raises with the end of that log.
    With `reuse`, a run already finished in `workdir` with the same spec is read back instead of
    repeated, so an interrupted benchmark continues where it stopped.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"{name}.spec.json"
    result_path = workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    text = json.dumps({**spec, "result": str(result_path)}, indent=1)
    if reuse and result_path.exists() and spec_path.exists() and spec_path.read_text(encoding="utf-8") == text:
        result = json.loads(result_path.read_text(encoding="utf-8"))
        result.setdefault("reused", True)
        return result
    result_path.unlink(missing_ok=True)
    spec_path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.run(
            [sys.executable, str(script), CHILD_FLAG, str(spec_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result_path.exists():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"run {name} failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["process_seconds"] = wall
    result_path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME:KEY=VALUE,KEY=VALUE` (a `--variant` flag) → (NAME, ["KEY=VALUE", ...]).

    A value may not contain a comma; give such settings with one `--variant` per key instead.
    """
    name, sep, body = text.partition(":")
    name = name.strip()
    overrides = [part.strip() for part in body.split(",") if part.strip()]
    if not sep or not name or not overrides or any("=" not in o for o in overrides):
        raise ValueError(
            f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...], e.g. mix-scalar:encoder.mix=scalar"
        )
    return name, overrides


def mean_spread(values: Sequence[float], digits: int = 2) -> str:
    """`mean` for one value, `mean ±sd` (sample standard deviation) for several; `-` for none."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ±{statistics.stdev(values):,.{digits}f}"


def optimizer_label(optimizer: Any) -> str:
    """`AdamW(fused=True)`: the optimiser a trainer built, looked up through accelerate's wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return f"{type(inner).__name__}(fused={inner.defaults.get('fused')})"
