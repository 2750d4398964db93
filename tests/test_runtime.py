"""The runtime (mtl/runtime.py): made from the launcher's variables, its collectives the identity on one
process, and real collectives between two gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO

from mtl.runtime import Runtime


def test_the_launchers_variables_make_the_runtime():
    alone = Runtime.from_environment({})
    assert (alone.rank, alone.world, alone.local_rank, alone.launched, alone.main) == (0, 1, 0, False, True)
    assert alone.device == torch.device("cpu") and not alone.lockstep_eval
    ranked = Runtime.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ranked.rank, ranked.world, ranked.local_rank, ranked.launched, ranked.main) == (3, 4, 1, True, False)
    # torchrun with one process is still a launch (DeepSpeed needs its process group)
    assert Runtime.from_environment({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}).launched


def test_one_process_collectives_are_the_identity():
    rt = Runtime.local("cpu")
    t = torch.tensor([1.5, -2.0])
    assert rt.all_reduce(t) is t and rt.all_reduce(t, "max") is t and t.tolist() == [1.5, -2.0]
    obj = {"a": [1, 2]}
    assert rt.broadcast(obj) is obj
    assert rt.gather(obj) == [obj] and rt.gather(obj)[0] is obj
    assert rt.any(True) and not rt.any(False)
    assert rt.total(7) == 7
    rt.barrier()  # no process group: nothing to wait for
    with rt.autocast():
        pass
    assert not torch.distributed.is_initialized()


def test_a_backend_binds_its_device_and_evaluation_mode_into_a_copy():
    base = Runtime.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    bound = base.bound(lockstep_eval=True, device=torch.device("cpu"))
    assert bound.lockstep_eval and not base.lockstep_eval
    assert (bound.rank, bound.world, bound.local_rank) == (1, 2, 1)
    assert base.joined() is base  # no process group started: rank and world as the launcher said


_WORKER = r"""
import json, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
from mtl.runtime import Runtime

out = Path(sys.argv[1])
rt = Runtime.from_environment()
dist.init_process_group("gloo")
r = rt.rank
found = {"rank": r, "world": rt.world, "local_rank": rt.local_rank, "launched": rt.launched, "main": rt.main}
found["sum"] = rt.all_reduce(torch.tensor([r + 1.0, 10.0])).tolist()
found["max"] = rt.all_reduce(torch.tensor([float(r), -float(r)]), "max").tolist()
found["any"] = [rt.any(r == 1), rt.any(False)]
found["total"] = rt.total(r + 2)
found["gather"] = rt.gather({"rank": r, "text": "x" * r})
found["broadcast"] = rt.broadcast(f"from {r}")
found["joined"] = [rt.joined().rank, rt.joined().world]
if r == 1:  # late to the barrier: rank 0 must not pass it before this file exists
    time.sleep(0.5)
    (out / "late").write_text("1")
rt.barrier()
found["after_barrier"] = (out / "late").exists()
(out / f"rank{r}.json").write_text(json.dumps(found))
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_reduce_gather_broadcast_and_wait(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    found = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, f in enumerate(found):
        assert (f["rank"], f["world"], f["local_rank"], f["launched"], f["main"]) == (r, 2, r, True, r == 0)
        assert f["sum"] == [3.0, 20.0]
        assert f["max"] == [1.0, 0.0]
        assert f["any"] == [True, False]
        assert f["total"] == 5
        assert f["gather"] == [{"rank": 0, "text": ""}, {"rank": 1, "text": "x"}]
        assert f["broadcast"] == "from 0"
        assert f["joined"] == [r, 2]
        assert f["after_barrier"]
