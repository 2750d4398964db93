"""What a run ran on: content digests of its data, the encoder's revision, code and environment.

A run is only worth comparing or repeating if a silently edited data file, a moved hub
revision or another library version shows up as a difference. Everything here is plain
data (JSON-friendly dicts), computed cheaply and without network access, so it can be
logged with every run and recomputed later by `mtl rerun` to say what changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mtl.core.config import DatasetConfig, EncoderConfig, Experiment
from mtl.runtime import Runtime

PACKAGES = ("mtl", "torch", "transformers", "tokenizers", "datasets", "accelerate", "deepspeed", "mlflow")
REPO_ROOT = Path(__file__).resolve().parents[1]
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- digests


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes: one changed byte gives another digest."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(path: str | Path) -> str:
    """SHA-256 over every file of a folder (relative names and bytes, in sorted order)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(file_digest(f).encode())
    return h.hexdigest()


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def hub_revision(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str | None:
    """The commit hash a hub name resolves to in the local cache (no network), or None if not cached."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    folder = _hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}"
    ref = folder / "refs" / (revision or "main")
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------- datasets


@dataclass
class DatasetRecord:
    """One split a run read: where from, a digest of its bytes, and how many examples it gave."""

    task: str
    dataset: str
    language: str
    role: str  # train | dev | test
    context: str  # train | dev | test | zero-shot (MLflow's input context)
    source: str  # absolute path, or hub name[/config] [split]
    digest: str  # sha256 of the file's bytes; for the hub: of name, config, split and revision
    hub: str | None = None
    hub_config: str | None = None
    hub_revision: str | None = None
    read: int = 0
    skipped: int = 0
    repaired: int = 0

    @property
    def name(self) -> str:
        return f"{self.task}/{self.dataset}/{self.role}"


def split_fingerprint(ds: DatasetConfig, role: str) -> dict[str, Any]:
    """Source and digest of one split of one dataset, without reading it through a family."""
    src = ds.split(role)
    if src is None:
        raise ValueError(f"dataset {ds.name}: no {role} split")
    if ds.hub:
        revision = hub_revision(ds.hub, "dataset")
        ident = json.dumps([ds.hub, ds.hub_config, src, revision])
        source = ds.hub + (f"/{ds.hub_config}" if ds.hub_config else "") + f" [{src}]"
        return {
            "source": source,
            "digest": hashlib.sha256(ident.encode()).hexdigest(),
            "hub": ds.hub,
            "hub_config": ds.hub_config,
            "hub_revision": revision,
        }
    path = Path(src).resolve()
    return {"source": str(path), "digest": file_digest(path) if path.is_file() else "missing"}


def context_of(role: str, zero_shot: bool) -> str:
    return "zero-shot" if zero_shot and role != "train" else role


def dataset_records(splits: Iterable[Any], read_counts: Mapping[str, Mapping] | None = None) -> list[DatasetRecord]:
    """One record per split read (`splits`: mtl.data.Split), with the family's skip/repair counts.

    `read_counts`: task → {(dataset name, role): {"skipped", "repaired"}} (TaskFamily.read_counts).
    """
    out = []
    for s in splits:
        counts = dict((read_counts or {}).get(s.task, {}).get((s.dataset.name, s.role), {}))
        out.append(
            DatasetRecord(
                task=s.task,
                dataset=s.dataset.name,
                language=s.dataset.language,
                role=s.role,
                context=context_of(s.role, s.zero_shot),
                read=s.n_examples,
                skipped=int(counts.get("skipped", 0)),
                repaired=int(counts.get("repaired", 0)),
                **split_fingerprint(s.dataset, s.role),
            )
        )
    return out


# --------------------------------------------------------------------------- encoder, code, machine


def encoder_record(cfg: EncoderConfig) -> dict[str, Any]:
    """What the encoder resolved to: a hub commit, a local folder's digest, or the config it was built from."""
    from mtl.encoder import resolve_name

    out: dict[str, Any] = {"name": cfg.name, "revision_requested": cfg.revision}
    names = {"encoder": cfg.name}
    if cfg.tokenizer:
        names["tokenizer"] = cfg.tokenizer
    if cfg.from_config is not None:
        spec = json.dumps(cfg.from_config, sort_keys=True)
        out["encoder_resolved"] = "from_config:" + hashlib.sha256(spec.encode()).hexdigest()
        names = {"tokenizer": cfg.tokenizer or cfg.name}
    for what, name in names.items():
        try:
            local = Path(resolve_name(name))
        except FileNotFoundError:
            out[f"{what}_resolved"] = "missing"
            continue
        if local.is_dir():
            out[f"{what}_resolved"] = "sha256:" + folder_digest(local)
        else:
            commit = hub_revision(name, "model", cfg.revision)
            out[f"{what}_resolved"] = f"hub:{name}@{commit or cfg.revision or 'unresolved'}"
    return out


def git_state(root: Path = REPO_ROOT) -> dict[str, str]:
    """Commit of the code that runs, and whether the work tree differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(dirty).lower()}


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device: Any = None) -> dict[str, str]:
    import torch

    out = {"cpu": cpu_model(), "cpu_count": str(os.cpu_count() or 0), "device": str(device or "cpu")}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_count"] = str(torch.cuda.device_count())
    else:
        out["gpu"] = "none"
        out["gpu_count"] = "0"
    return out


def environment(exp: Experiment, runtime: Runtime, world_size: int | None = None) -> dict[str, str]:
    """Versions, commit, machine and launch as flat strings (MLflow tags), for a run on `runtime`;
    `world_size`: the processes of a run yet to start, where they are not the runtime's."""
    world_size = runtime.world if world_size is None else world_size
    env = {f"version.{k}": v for k, v in package_versions().items()}
    env["version.python"] = platform.python_version()
    env.update({f"git.{k}": v for k, v in git_state().items()})
    env.update(device_record(runtime.device))
    env["platform"] = platform.platform()
    env["world_size"] = str(world_size)
    env["launch.profile"] = exp.launch.profile
    # Processes actually started on this node (`--nproc` starts torchrun without changing the config).
    # torchrun sets LOCAL_WORLD_SIZE, the `deepspeed` launcher LOCAL_SIZE (and CROSS_RANK)
    local_size = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE")
    env["launch.nproc_per_node"] = local_size or str(exp.launch.nproc_per_node)
    launcher = "deepspeed" if "CROSS_RANK" in os.environ else "torchrun"
    env["launch.launcher"] = launcher if runtime.launched or world_size > 1 else "none"
    local = int(local_size or world_size or 1)
    env["launch.nnodes"] = str(max(1, world_size // max(1, local)))  # nodes torchrun started
    env["deterministic"] = str(exp.train.deterministic).lower()
    env.update({f"encoder.{k}": str(v) for k, v in encoder_record(exp.encoder).items()})
    return env


def run_record(exp: Experiment, datasets: Sequence[DatasetRecord], runtime: Runtime) -> dict[str, Any]:
    """The whole record one run logs as records/run.json (what `mtl rerun` and `mtl compare` read)."""
    return {
        "environment": environment(exp, runtime),
        "datasets": [asdict(d) for d in datasets],
        "base_dir": exp._base_dir,
        "data_root": exp.data_root,
    }


# --------------------------------------------------------------------------- determinism


def use_deterministic_kernels() -> None:
    """Ask torch for deterministic kernels (train.deterministic).

    On CPU, runs with the same seed and number of processes are bit-identical without this.
    On GPU, cuDNN autotuning and atomic-add kernels (scatter, index_add, embedding backward)
    make two runs drift apart; this turns autotuning off, picks deterministic cuDNN and
    cuBLAS algorithms (CUBLAS_WORKSPACE_CONFIG) and makes torch raise on an operation that
    has no deterministic version. It costs speed, typically 5-30% on transformer encoders.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=False)


# --------------------------------------------------------------------------- differences


# Keys that differ from one machine or moment to the next without changing what a run computes.
_UNINTERESTING = {"platform", "cpu_count"}


def differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two run records (data digests first, then environment)."""
    out = []
    old_ds = {d["task"] + "/" + d["dataset"] + "/" + d["role"]: d for d in before.get("datasets", [])}
    new_ds = {d["task"] + "/" + d["dataset"] + "/" + d["role"]: d for d in now.get("datasets", [])}
    for name in sorted(old_ds.keys() | new_ds.keys()):
        a, b = old_ds.get(name), new_ds.get(name)
        if a is None or b is None:
            out.append(f"data {name}: {'only now' if a is None else 'no longer read'}")
        elif a["digest"] != b["digest"]:
            out.append(f"data {name}: digest {a['digest'][:12]} → {b['digest'][:12]} ({b['source']} changed)")
        elif a["source"] != b["source"]:
            out.append(f"data {name}: same bytes, read from {b['source']} (was {a['source']})")
    env_a, env_b = before.get("environment", {}), now.get("environment", {})
    for key in sorted(env_a.keys() | env_b.keys()):
        if key in _UNINTERESTING:
            continue
        if env_a.get(key) != env_b.get(key):
            out.append(f"{key}: {env_a.get(key, '—')} → {env_b.get(key, '—')}")
    return out
