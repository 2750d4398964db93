"""Runs several `mtl train` commands one after another in one torchrun launch (each process starts
and imports DeepSpeed once for them all): `python -m torch.distributed.run … tests/deepspeed_plan.py PLAN.json`.

PLAN.json is a list of {"config": YAML, "set": [KEY=VALUE, …], "resume": bool, "seed": CHECKPOINT or null,
"expect": EXIT CODE (default 0)}; a seed checkpoint is copied into the run's output folder first (by rank 0), so
that `--resume` starts there. A run expected to fail (exit 1, a diverging one) must fail on every process alike:
a process that went on alone would hang in the next collective.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import deepspeed
import torch.distributed as dist

from launch.cli import main
from mtl.experiment import load_experiment


def run(plan: list[dict]) -> None:
    start = time.perf_counter()
    deepspeed.init_distributed()
    print(f"plan: DeepSpeed's process group: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    for item in plan:
        if item.get("seed") and dist.get_rank() == 0:
            seed = Path(item["seed"])
            shutil.copytree(seed, load_experiment(item["config"], item["set"]).output_dir / seed.name)
        dist.barrier()
        args = ["train", item["config"], *(f"--set={kv}" for kv in item["set"])]
        start = time.perf_counter()
        code = main(args + (["--resume"] if item.get("resume") else []))
        if code != item.get("expect", 0):
            raise SystemExit(f"mtl {' '.join(args)} exited with {code}")
        print(f"plan: {' '.join(args)}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
