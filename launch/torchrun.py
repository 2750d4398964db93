"""The torchrun command line of one node: one home for it, used by `mtl train` and the SLURM script.

One node (`--nnodes 1`) runs torchrun's standalone rendezvous on a free local port. Several nodes
meet at the first node's address: with node ranks given by hand, torchrun's static rendezvous at
MASTER_ADDR:MASTER_PORT (node rank 0 hosts it); with a rendezvous id (a SLURM job id), its c10d
rendezvous there, where node ranks are assigned as the nodes arrive, so any node may start first.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

DEFAULT_PORT = 29500  # torchrun's own default


@dataclass(frozen=True)
class Nodes:
    """Where this node stands in a (possibly multi-node) run; the values of `mtl train`'s flags."""

    nproc: int = 1  # processes on this node (one per GPU)
    nnodes: int = 1
    node_rank: int | None = None  # static rendezvous: 0 … nnodes-1, distinct on every node
    master_addr: str | None = None  # the host of node rank 0 (static) or of the rendezvous (c10d)
    master_port: int = DEFAULT_PORT
    rdzv_id: str | None = None  # c10d rendezvous: the same id on every node (a SLURM job id)

    def problems(self) -> list[str]:
        """What is wrong with the flags, as the messages the CLI shows (empty when fine)."""
        out = []
        if self.nproc < 1:
            out.append(f"--nproc must be at least 1, got {self.nproc}")
        if self.nnodes < 1:
            out.append(f"--nnodes must be at least 1, got {self.nnodes}")
        if not 0 < self.master_port < 65536:
            out.append(f"--master-port must be a port number (1–65535), got {self.master_port}")
        if self.nnodes > 1:
            if not self.master_addr:
                out.append("--nnodes > 1 needs --master-addr: the host of node rank 0, the same on every node")
            if self.rdzv_id is None and self.node_rank is None:
                out.append("--nnodes > 1 needs --node-rank R (0 … nnodes-1, one per node), or --rdzv-id ID "
                           "to let the nodes take ranks as they arrive")
        if self.node_rank is not None and not 0 <= self.node_rank < self.nnodes:
            out.append(f"--node-rank must be in 0 … {self.nnodes - 1} (--nnodes {self.nnodes}), got {self.node_rank}")
        if self.nnodes == 1 and (self.master_addr or self.rdzv_id):
            out.append("--master-addr and --rdzv-id are for runs over several nodes (--nnodes > 1)")
        return out

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


def torchrun_command(nodes: Nodes, program: list[str], python: str | None = None) -> list[str]:
    """`python -m torch.distributed.run <rendezvous> -m <program…>` for this node."""
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nodes.nproc}",
           f"--nnodes={nodes.nnodes}"]
    if nodes.nnodes == 1:
        cmd.append("--standalone")
    elif nodes.rdzv_id is not None:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={nodes.master_addr}:{nodes.master_port}",
                f"--rdzv_id={nodes.rdzv_id}"]
        if nodes.node_rank is not None:  # read by static rendezvous only; kept so the log shows it
            cmd.append(f"--node_rank={nodes.node_rank}")
    else:
        cmd += [f"--node_rank={nodes.node_rank}", f"--master_addr={nodes.master_addr}",
                f"--master_port={nodes.master_port}"]
    return [*cmd, "-m", *program]
