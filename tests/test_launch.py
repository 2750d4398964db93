"""Launching over several nodes: torchrun command lines, `mtl train`'s node flags, and the SLURM
script of `mtl launch slurm`, run end to end here with stand-ins for srun and scontrol."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_encoder

from launch.cli import main
from launch.slurm import SlurmJob, sbatch_script
from launch.torchrun import Nodes, torchrun_command

PY = "/env/bin/python"


# --------------------------------------------------------------------------- torchrun command lines


def test_one_node_is_standalone():
    cmd = torchrun_command(Nodes(nproc=4), ["launch.cli", "train", "x.yaml"], python=PY)
    assert cmd == [PY, "-m", "torch.distributed.run", "--nproc_per_node=4", "--nnodes=1", "--standalone",
                   "-m", "launch.cli", "train", "x.yaml"]


def test_nodes_with_ranks_meet_at_the_first_node():
    nodes = Nodes(nproc=8, nnodes=4, node_rank=2, master_addr="gpu01", master_port=29400)
    cmd = torchrun_command(nodes, ["launch.cli", "train", "x.yaml"], python=PY)
    assert cmd == [PY, "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=4", "--node_rank=2",
                   "--master_addr=gpu01", "--master_port=29400", "-m", "launch.cli", "train", "x.yaml"]
    assert "--standalone" not in cmd


def test_a_rendezvous_id_uses_c10d_at_the_master_address():
    nodes = Nodes(nproc=8, nnodes=2, node_rank=1, master_addr="gpu01", master_port=29400, rdzv_id="4242")
    cmd = torchrun_command(nodes, ["launch.cli", "train", "x.yaml"], python=PY)
    assert cmd[3:] == ["--nproc_per_node=8", "--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu01:29400",
                       "--rdzv_id=4242", "--node_rank=1", "-m", "launch.cli", "train", "x.yaml"]


@pytest.mark.parametrize("nodes, message", [
    (Nodes(nnodes=2, node_rank=0), "needs --master-addr"),
    (Nodes(nnodes=2, master_addr="h"), "needs --node-rank"),
    (Nodes(nnodes=2, node_rank=2, master_addr="h"), "--node-rank must be in 0 … 1"),
    (Nodes(master_addr="h"), "for runs over several nodes"),
    (Nodes(nnodes=2, node_rank=0, master_addr="h", master_port=70000), "--master-port must be a port"),
])
def test_node_flags_that_cannot_work_are_named(nodes, message):
    assert any(message in p for p in nodes.problems()), nodes.problems()


def test_node_flags_are_checked_before_anything_starts(tmp_path, data_dir, capsys):
    cfg = _experiment(tmp_path, data_dir)
    assert main(["train", str(cfg), "--nnodes", "2", "--node-rank", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtl: error:") and "--master-addr" in err
    assert not (tmp_path / "run").exists()


def test_relaunch_passes_everything_but_the_launcher_flags(monkeypatch):
    """The children run the same command without the flags torchrun took care of."""
    import launch.cli as cli

    seen: list = []
    monkeypatch.setattr("subprocess.call", lambda cmd: seen.append(cmd) or 0)
    argv = ["mtl", "train", "e.yaml", "--set", "train.steps=3", "--nproc", "2", "--nnodes=2", "--node-rank", "1",
            "--master-addr", "h", "--master-port=29401", "--rdzv-id", "7", "--resume"]
    monkeypatch.setattr(sys, "argv", argv)
    nodes = Nodes(nproc=2, nnodes=2, node_rank=1, master_addr="h", master_port=29401, rdzv_id="7")
    assert cli._relaunch_torchrun(nodes) == 0
    cmd = seen[0]
    assert cmd[cmd.index("-m", 3):] == ["-m", "launch.cli", "train", "e.yaml", "--set", "train.steps=3", "--resume"]
    assert "--rdzv_endpoint=h:29401" in cmd and "--nproc_per_node=2" in cmd


# --------------------------------------------------------------------------- the SLURM script


def _job(tmp_path: Path, **over) -> SlurmJob:
    base = {"experiment": tmp_path / "exp.yaml", "name": "glue mini", "nodes": 2, "gpus_per_node": 4,
            "partition": "gpu", "time": "02:00:00", "account": "proj1", "overrides": ["train.steps=3"],
            "python": PY, "workdir": tmp_path}
    return SlurmJob(**{**base, **over})


def test_sbatch_script_for_two_nodes(tmp_path):
    script = sbatch_script(_job(tmp_path))
    sbatch = [ln.split(None, 1)[1] for ln in script.splitlines() if ln.startswith("#SBATCH")]
    assert sbatch == ["--job-name=glue-mini", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4",
                      "--cpus-per-task=32", "--partition=gpu", "--time=02:00:00", "--account=proj1",
                      "--output=glue-mini-%j.out"]
    assert 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in script
    assert "export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}" in script
    srun = script[script.index("\nsrun ") + 1:].replace("\\\n", " ")
    words = shlex.split(srun)
    assert words[:4] == ["srun", "--kill-on-bad-exit=1", "bash", "-c"]
    node = words[4]  # the per-node command: its node values are read on the node (single-quoted here)
    for flag in ('--nnodes "$SLURM_NNODES"', '--node-rank "$SLURM_NODEID"', '--master-addr "$MASTER_ADDR"',
                 '--master-port "$MASTER_PORT"', '--rdzv-id "$SLURM_JOB_ID"'):
        assert flag in node
    assert node.startswith('exec "$0" -m launch.cli train "$@"')
    assert words[5:] == ["$PYTHON", str(tmp_path / "exp.yaml"), "--set", "train.steps=3", "--nproc", "4"]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_sbatch_script_leaves_out_what_was_not_asked_and_refuses_bad_values(tmp_path):
    script = sbatch_script(_job(tmp_path, partition=None, time=None, account=None, master_port=29555,
                                cpus_per_task=6))
    assert "--partition" not in script and "--time" not in script and "--account" not in script
    assert "#SBATCH --cpus-per-task=6" in script and "MASTER_PORT=${MASTER_PORT:-29555}" in script
    from launch.slurm import SlurmError

    with pytest.raises(SlurmError, match="not a SLURM time"):
        sbatch_script(_job(tmp_path, time="2 hours"))
    with pytest.raises(SlurmError, match="--nodes must be at least 1"):
        sbatch_script(_job(tmp_path, nodes=0))
    with pytest.raises(SlurmError, match="--partition"):
        sbatch_script(_job(tmp_path, partition="gpu; rm -rf /"))


# --------------------------------------------------------------------------- end to end on this machine


def _experiment(tmp_path: Path, data_dir: Path) -> Path:
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc.update({"max_length": 64})
    cfg = {
        "name": "slurm-mini",
        "data_root": str(data_dir),
        "encoder": enc,
        "tasks": {"sst2": {"family": "classification", "datasets": [{
            "language": "en", "train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv",
            "fields": {"text": "sentence", "label": "label"}, "max_examples": 24}]}},
        "sampling": {"batch_size": 8},
        "train": {"steps": 2, "output_dir": str(tmp_path / "run"), "eval_batch_size": 32},
        "tracking": {"enabled": False},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


STAND_IN_SRUN = """#!/bin/bash
# srun's stand-in: the command once per "node", here, with the variables SLURM sets on each node
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
    SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" > "node$node.log" 2>&1 &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
cat node*.log
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_script_trains_on_two_nodes_with_stand_in_srun(tmp_path, data_dir, monkeypatch, capsys):
    exp = _experiment(tmp_path, data_dir)
    monkeypatch.chdir(tmp_path)  # the job runs where it was written
    script = tmp_path / "job.sbatch"
    assert main(["launch", "slurm", str(exp), "--nodes", "2", "--gpus-per-node", "1", "--set", "train.steps=3",
                 "--output", str(script)]) == 0
    assert "sbatch" in capsys.readouterr().err and os.access(script, os.X_OK)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(STAND_IN_SRUN)
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && echo localhost\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "MTL_LOG_LEVEL": "WARNING",
           "TQDM_DISABLE": "1"}
    slurm = {"PATH": f"{bin_dir}:{env['PATH']}", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": str(_free_port()), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, env={**env, **slurm}, capture_output=True,
                         text=True, timeout=150)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert f"rendezvous localhost:{slurm['MASTER_PORT']} (c10d, id 4242)" in log
    assert log.count("--rdzv_backend=c10d") == 2 and "--node_rank=0" in log and "--node_rank=1" in log
    from mtl.checkpoint import latest

    found = latest(tmp_path / "run")
    assert found is not None and found.step == 3  # the --set of the script reached the run
    assert found.state()["world_size"] == 2  # one process on each of the two "nodes"
    assert (found.path / "model.pt").is_file()
    state = torch.load(found.path / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in state.values())
