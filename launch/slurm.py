"""An sbatch script for a run over several nodes: one SLURM task per node, torchrun on each.

The first node of the allocation hosts torchrun's c10d rendezvous (MASTER_ADDR, from `scontrol show
hostnames`); the job id is the rendezvous id, so the nodes find each other in any order. Each node
runs `mtl train` with the node flags of launch/cli.py, which starts torchrun with one process per
GPU (on a node without GPUs: as many processes, on gloo). Values that differ per node
(SLURM_NODEID) are read on that node: the per-node command runs in its own `bash -c`.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtl.core.errors import ConfigError

# Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
TIME = re.compile(r"\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}")
CPUS_PER_GPU = 8

# The command srun runs once per node: its arguments (python, then mtl's) follow as "$0" "$@".
NODE_COMMAND = (
    'exec "$0" -m launch.cli train "$@" --nnodes "$SLURM_NNODES" --node-rank "$SLURM_NODEID" '
    '--master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --rdzv-id "$SLURM_JOB_ID"'
)


class SlurmError(ConfigError):
    """A value the sbatch script cannot take, phrased for the command line (shown as `mtl: error: …`)."""


@dataclass
class SlurmJob:
    """What `mtl launch slurm` was asked for."""

    experiment: Path
    name: str  # the experiment's name: the job name
    nodes: int
    gpus_per_node: int
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None  # default: CPUS_PER_GPU per GPU
    master_port: int | None = None  # default: derived from the job id, so two jobs on one node do not collide
    overrides: list[str] = field(default_factory=list)
    python: str = sys.executable
    workdir: Path = field(default_factory=Path.cwd)

    def check(self) -> None:
        if self.nodes < 1:
            raise SlurmError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise SlurmError(f"--gpus-per-node must be at least 1, got {self.gpus_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise SlurmError(f"--cpus-per-task must be at least 1, got {self.cpus_per_task}")
        if self.time is not None and not TIME.fullmatch(self.time):
            raise SlurmError(f"--time {self.time!r}: not a SLURM time (e.g. 90, 12:00:00, 2-00:00:00)")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise SlurmError(f"--master-port must be a port number (1–65535), got {self.master_port}")
        for name in ("partition", "account"):
            value = getattr(self, name)
            if value is not None and not re.fullmatch(r"[\w.,-]+", value):
                raise SlurmError(f"--{name} {value!r}: only letters, digits and . , - _ go into #SBATCH")


def job_name(name: str) -> str:
    """The experiment name as a SLURM job name (no spaces or shell characters in #SBATCH lines)."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "mtl"


def sbatch_script(job: SlurmJob) -> str:
    """The whole script: #SBATCH lines, the rendezvous address and port, and one srun over all nodes."""
    job.check()
    name = job_name(job.name)
    cpus = job.cpus_per_task or CPUS_PER_GPU * job.gpus_per_node
    sbatch = [
        f"--job-name={name}",
        f"--nodes={job.nodes}",
        "--ntasks-per-node=1",  # one torchrun per node; it starts the processes of that node
        f"--gpus-per-node={job.gpus_per_node}",
        f"--cpus-per-task={cpus}",
        *([f"--partition={job.partition}"] if job.partition else []),
        *([f"--time={job.time}"] if job.time else []),
        *([f"--account={job.account}"] if job.account else []),
        f"--output={name}-%j.out",
    ]
    experiment = Path(os.path.abspath(job.experiment))
    mtl_args = [str(experiment), *(a for o in job.overrides for a in ("--set", o)), "--nproc", str(job.gpus_per_node)]
    port = str(job.master_port) if job.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    lines = [
        "#!/bin/bash",
        f"# {name}: {job.nodes} node(s) x {job.gpus_per_node} GPU(s). Written by `mtl launch slurm`; "
        f"submit with `sbatch <this file>`.",
        *(f"#SBATCH {s}" for s in sbatch),
        "",
        "set -eu",
        f"cd {shlex.quote(str(job.workdir))}",
        f"export PYTHON=${{PYTHON:-{shlex.quote(job.python)}}}",
        "# The first node hosts the rendezvous; the job id names it.",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export MASTER_PORT=${{MASTER_PORT:-{port}}}",
        'echo "mtl: $SLURM_NNODES node(s), rendezvous $MASTER_ADDR:$MASTER_PORT (c10d, id $SLURM_JOB_ID)"',
        "# One task per node; $SLURM_NODEID is read on each node, inside its own bash -c.",
        "srun --kill-on-bad-exit=1 bash -c " + shlex.quote(NODE_COMMAND) + ' "$PYTHON" \\',
        "    " + " ".join(shlex.quote(a) for a in mtl_args),
        "",
    ]
    return "\n".join(lines)
