"""Checkpoints: written atomically, complete enough to resume exactly or to predict on any device."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.config import ConfigError, TrainingError

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
_OLD = ".old-"  # a checkpoint moved aside while the same step is written again
_TMP = ".tmp-"  # a checkpoint being written


@dataclass
class Checkpoint:
    path: Path

    @property
    def step(self) -> int:
        return int(self.path.name.rsplit("-", 1)[1])

    def state(self) -> dict[str, Any]:
        return json.loads((self.path / "trainer_state.json").read_text())

    def vocab(self) -> dict[str, Any]:
        return json.loads((self.path / "vocab.json").read_text(encoding="utf-8"))

    def experiment_yaml(self) -> Path:
        return self.path / "experiment.yaml"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    output_dir: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    scheduler_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    vocab: dict[str, Any],
    experiment_yaml: str,
    tokenizer: Any,
    encoder_config: Any,
    rng_states: list[dict[str, Any]],
    keep: int,
    started: Path | None = None,
) -> Path:
    """Write everything into a temporary folder, then rename it into place in one step.

    A kill at any moment leaves the previous checkpoints loadable: a half-written folder has a
    hidden name that is never listed, and a step written again keeps its old folder (hidden, still
    listed) until the new one is in place. `started`: a folder from `start()` that other processes
    have already written their shards into.
    """
    final = output_dir / f"{PREFIX}{step}"
    tmp = started or start(output_dir, step)
    try:
        torch.save(model_state, tmp / "model.pt")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if scheduler_state is not None:
            torch.save(scheduler_state, tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=1, ensure_ascii=False), encoding="utf-8")
        (tmp / "experiment.yaml").write_text(experiment_yaml, encoding="utf-8")
        tokenizer.save_pretrained(tmp / "tokenizer")
        encoder_config.save_pretrained(tmp / "encoder")
        write_manifest(tmp)  # last: a checkpoint whose files no longer match it is not resumed from
        for f in tmp.rglob("*"):
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError ("unexpected pos")
        shutil.rmtree(tmp, ignore_errors=True)  # no partial folder is left
        _explain_write_failure(err, output_dir, final.name, state_bytes(model_state, optimizer_state))
        raise
    aside = output_dir / f"{_OLD}{final.name}"
    if final.exists():
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    if aside.exists():
        shutil.rmtree(aside)
    _rotate(output_dir, keep)
    return final


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Every file of the checkpoint (ZeRO shards included) with its size and SHA-256."""
    files = {str(f.relative_to(folder)): {"size": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def damage(found: Checkpoint) -> str | None:
    """What is wrong with a checkpoint's files against its manifest (None: nothing, or no manifest: an older
    checkpoint, taken as it is)."""
    manifest = found.path / MANIFEST
    if not manifest.exists():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"{manifest}: unreadable ({err})"
    for name, want in files.items():
        f = found.path / name
        if not f.is_file():
            return f"{f}: missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{f}: {size:,} bytes where {want['size']:,} were written (truncated or overwritten)"
        if _sha256(f) != want["sha256"]:
            return f"{f}: its bytes changed since it was written (SHA-256 differs)"
    return None


def latest_intact(output_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint whose files match their manifest, and what was wrong with the newer ones."""
    problems = []
    for found in reversed(list_checkpoints(output_dir)):
        problem = damage(found)
        if problem is None:
            return found, problems
        problems.append(problem)
    return None, problems


# Keys a resumed run may change without saying so: where and how it runs and reports, not what it trains.
RESUMABLE_CHANGES = ("name", "data_root", "tracking", "launch", "train.output_dir", "train.cache_dir",
                     "train.tokenize_workers", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.eval_batch_size", "train.deterministic")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def experiment_changes(found: Checkpoint, experiment_yaml: str, allowed: Sequence[str] = ()) -> list[str]:
    """Keys whose values differ between the experiment a checkpoint was trained with and `experiment_yaml`
    (both as `dump_experiment` writes them), as "key: old → new", leaving out RESUMABLE_CHANGES and `allowed`
    (a key or the start of keys: `train` allows every train.* change)."""
    import yaml

    saved = _flat(yaml.safe_load(found.experiment_yaml().read_text(encoding="utf-8")) or {})
    now = _flat(yaml.safe_load(experiment_yaml) or {})
    free = (*RESUMABLE_CHANGES, *allowed)

    def is_free(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in free)

    return [f"{k}: {saved.get(k, '(not set)')!r} → {now.get(k, '(not set)')!r}"
            for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k) and not is_free(k)]


def state_bytes(*states: Any) -> int:
    """Bytes of the tensors in (nested) states: about what their files take on disk."""
    total = 0
    stack = list(states)
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _explain_write_failure(err: BaseException, output_dir: Path, name: str, need: int) -> None:
    """A full disk says so, with the folder and the size needed; other failures are raised as they are."""
    try:
        free = shutil.disk_usage(output_dir).free
    except OSError:
        return
    full = getattr(err, "errno", None) == errno.ENOSPC or "unexpected pos" in str(err) or free < need
    if full:
        raise TrainingError(f"{output_dir}: no space left on device while writing {name} ({_mib(free)} free, "
                            f"the checkpoint needs about {_mib(need)}); nothing of it was left behind and the "
                            "previous checkpoint is intact: make room, then run again with --resume") from None


def resume_point(output_dir: Path, experiment_yaml: str, allowed: Sequence[str] = ()) -> Checkpoint | None:
    """The checkpoint `--resume` continues from: the newest intact one (a damaged one is passed over, and
    named), if its experiment is this one (a changed key is refused unless `allowed`: `--allow-change`)."""
    found, damaged = latest_intact(output_dir)
    for problem in damaged:
        log.warning("not resuming from a damaged checkpoint: %s", problem)
    if found is None:
        if damaged:
            raise ConfigError(f"{output_dir}: every checkpoint is damaged ({'; '.join(damaged)}); "
                              "start again without --resume")
        return None
    if damaged:
        log.warning("resuming from %s instead, the newest intact checkpoint", found.path)
    changes = experiment_changes(found, experiment_yaml, allowed)
    if changes:
        raise ConfigError(
            f"--resume: the experiment differs from the one {found.path} was trained with: {'; '.join(changes)}. "
            "Resume with the same experiment, start a new run (another train.output_dir), or say which "
            "changes are meant with --allow-change KEY (e.g. --allow-change train.steps)")
    return found


def warn_if_no_room(output_dir: Path, model: torch.nn.Module) -> None:
    """Say before step 1 when the output folder has less room than one checkpoint takes (weights and
    AdamW's two moments)."""
    need = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(output_dir).free
    if free < need:
        log.warning("%s has %s free; a checkpoint of this model takes about %s: checkpoints will fail unless "
                    "room is made", output_dir, _mib(free), _mib(need))


def start(output_dir: Path, step: int) -> Path:
    """The hidden temporary folder a checkpoint is written into (what killed writes left is cleared first)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _tidy(output_dir)
    tmp = output_dir / f"{_TMP}{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (the folder's entry list), where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tidy(output_dir: Path) -> None:
    """Clear what killed writes left: half-written folders, and folders set aside whose step is back."""
    for p in output_dir.iterdir():
        if p.name.startswith(_TMP + PREFIX) or p.name.startswith(".trash-"):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(_OLD + PREFIX):
            back = output_dir / p.name[len(_OLD) :]
            if back.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, back)


def _rotate(output_dir: Path, keep: int) -> None:
    found = sorted(list_checkpoints(output_dir), key=lambda c: c.step)
    for old in found[: max(0, len(found) - keep)]:
        trash = output_dir / f".trash-{old.path.name}"
        os.replace(old.path, trash)  # gone from the listing at once, even if the removal is cut short
        shutil.rmtree(trash, ignore_errors=True)


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first (one set aside by an interrupted re-write counts as its step)."""
    if not output_dir.is_dir():
        return []
    found: dict[int, Checkpoint] = {}
    for p in sorted(output_dir.iterdir(), key=lambda p: p.name.startswith(_OLD)):
        name = p.name[len(_OLD) :] if p.name.startswith(_OLD) else p.name
        if p.is_dir() and name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() and (p / "model.pt").exists():
            found.setdefault(int(name[len(PREFIX) :]), Checkpoint(p))
    return [found[k] for k in sorted(found)]


def latest(output_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


BEST = "best"  # sub-folder of a run holding its best evaluated checkpoint (train.select_best)


def best(output_dir: Path) -> Checkpoint | None:
    return latest(Path(output_dir) / BEST)


def resolve(path: str | Path, which: str = "best") -> Checkpoint:
    """A checkpoint folder, or a run folder: its best checkpoint when it kept one (and `which` is
    "best"), else its latest."""
    p = Path(path)
    if (p / "model.pt").exists():
        return Checkpoint(p)
    found = (best(p) if which == "best" else None) or latest(p)
    if found is None:
        raise FileNotFoundError(f"{p}: no checkpoint here (expected model.pt or {PREFIX}N/ folders)")
    return found
