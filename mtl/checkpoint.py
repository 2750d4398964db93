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

from mtl.core.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)

ZERO_SHARDS = "zero"  # sub-folder of DeepSpeed's ZeRO shards: with them optimizer.pt may be absent
PREFIX = "checkpoint-"
_OLD = ".old-"  # a checkpoint moved aside while the same step is written again
_TMP = ".tmp-"  # a checkpoint being written


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, truncated or unreadable: the message names the file and what is wrong,
    in place of the torch, json or yaml error its load raised."""


# What a checkpoint holds (`save` writes each): what resuming reads, and the part evaluation and prediction read.
RESUME_FILES = ("model.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json", "vocab.json",
                "experiment.yaml", "tokenizer", "encoder")
PREDICT_FILES = ("model.pt", "vocab.json", "experiment.yaml", "tokenizer", "encoder")
FOLDER_FILES = {"tokenizer": ("tokenizer_config.json",), "encoder": ("config.json",)}  # what save_pretrained writes


def _reason(err: BaseException) -> str:
    """The first sentence of an error, short (torch's zip errors go on about miniz for lines)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.split(". ")[0][:200]


@dataclass
class Checkpoint:
    path: Path

    @property
    def step(self) -> int:
        return int(self.path.name.rsplit("-", 1)[1])

    def file(self, name: str) -> Path:
        """The path of one of its files, which must be there."""
        path = self.path / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing from the checkpoint (it was removed or never fully copied)")
        return path

    def _unreadable(self, path: Path, err: BaseException) -> CheckpointError:
        size = path.stat().st_size if path.is_file() else 0
        what = "empty" if size == 0 else f"{size:,} bytes"
        return CheckpointError(f"{path}: unreadable ({what}; truncated or damaged: {_reason(err)})")

    def load(self, name: str, weights_only: bool = False, mmap: bool = False) -> Any:
        """A torch file of the checkpoint, on the CPU; missing or unreadable: a CheckpointError naming it."""
        path = self.file(name)
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
        except MemoryError:
            raise
        except Exception as err:  # a cut zip (RuntimeError), a short read (OSError, EOFError), a bad pickle …
            raise self._unreadable(path, err) from None

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise self._unreadable(path, err) from None

    def read_yaml(self, name: str) -> Any:
        import yaml

        path = self.file(name)
        try:
            text = path.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise self._unreadable(path, err) from None
        # yaml.safe_dump ends every file with a line break and writes a mapping: a cut one often still parses
        if not text.endswith("\n") or not isinstance(data, dict):
            raise self._unreadable(path, ValueError("its last line is cut short" if text else "no text"))
        return data

    def state(self) -> dict[str, Any]:
        return self.read_json("trainer_state.json")

    def vocab(self) -> dict[str, Any]:
        return self.read_json("vocab.json")

    def experiment_yaml(self) -> Path:
        return self.file("experiment.yaml")

    def check(self, name: str) -> None:
        """Read one of its files (or folders) as a load would, without keeping it: a CheckpointError if it
        cannot be (cheap: torch files are mapped, not read)."""
        if name.endswith(".pt"):
            if name == "optimizer.pt" and not (self.path / name).exists() and (self.path / ZERO_SHARDS).is_dir():
                return  # the trainer decides whether its ZeRO shards fit this launch
            self.load(name, mmap=True)
        elif name.endswith(".json"):
            self.read_json(name)
        elif name.endswith((".yaml", ".yml")):
            self.read_yaml(name)
        else:  # tokenizer/, encoder/: the file each always has is there, every JSON file parses (the rest,
            # e.g. a sentencepiece model, is checked by its loader)
            folder = self.file(name)
            for required in FOLDER_FILES.get(name, ()):
                self.file(f"{name}/{required}")
            for f in sorted(folder.rglob("*.json")):
                self.read_json(str(f.relative_to(self.path)))
            if name == "tokenizer" and self.read_json("tokenizer/tokenizer_config.json").get("backend") == "tokenizers":
                self.file("tokenizer/tokenizer.json")  # without it transformers builds a 5-token vocabulary, silently


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


def damage(found: Checkpoint, only: Sequence[str] | None = None) -> str | None:
    """What is wrong with a checkpoint's files (None: nothing): against its manifest, or, for a checkpoint written
    before manifests, whether each file loads. `only`: just these files and folders (default: all it holds)."""
    manifest = found.path / MANIFEST
    if not manifest.exists():
        for name in only or RESUME_FILES:
            try:
                found.check(name)
            except CheckpointError as err:
                return str(err)
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"{manifest}: unreadable ({err})"
    for name, want in files.items():
        if only is not None and name.split("/", 1)[0] not in only:
            continue
        f = found.path / name
        if not f.is_file():
            return f"{f}: missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{f}: {size:,} bytes where {want['size']:,} were written (truncated or overwritten)"
        if _sha256(f) != want["sha256"]:
            return f"{f}: its bytes changed since it was written (SHA-256 differs)"
    return None


def check_loadable(found: Checkpoint, only: Sequence[str] = PREDICT_FILES) -> None:
    """A CheckpointError naming the file when any of `only` is damaged (before its loads fail deep inside)."""
    problem = damage(found, only)
    if problem is not None:
        raise CheckpointError(f"{problem}; the checkpoint {found.path} cannot be loaded")


def latest_intact(output_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint whose files match their manifest, and what was wrong with the newer ones."""
    problems = []
    for found in reversed(list_checkpoints(output_dir)):
        problem = damage(found)
        if problem is None:
            return found, problems
        problems.append(problem)
    return None, problems


def weights(found: Checkpoint) -> dict[str, torch.Tensor]:
    """A checkpoint's model.pt (e.g. the best one a later stage starts from), checked against its manifest
    first: bytes changed since it was written are an error, not weights to go on from."""
    check_loadable(found, ("model.pt",))
    return found.load("model.pt", weights_only=True)


# Keys a resumed run may change without saying so: where and how it runs and reports, not what it trains.
RESUMABLE_CHANGES = ("name", "data_root", "tracking", "launch", "train.output_dir", "train.cache_dir",
                     "train.tokenize_workers", "train.log_every", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.eval_batch_size", "train.deterministic",
                     "train.grad_conflict_every")  # a measurement beside training, which it leaves unchanged


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

    saved = _flat(found.read_yaml("experiment.yaml") or {})
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


def resume_point(output_dir: Path, experiment_yaml: str, allowed: Sequence[str] = (),
                 warn: bool = True) -> Checkpoint | None:
    """The checkpoint `--resume` continues from: the newest intact one (a damaged one is passed over, and
    named), if its experiment is this one (a changed key is refused unless `allowed`: `--allow-change`).
    warn=False: only the errors (a check made before the resume itself, which warns)."""
    found, damaged = latest_intact(output_dir)
    for problem in damaged if warn else ():
        log.warning("not resuming from a damaged checkpoint: %s", problem)
    if found is None:
        if damaged:
            raise ConfigError(f"{output_dir}: every checkpoint is damaged ({'; '.join(damaged)}); "
                              "start again without --resume")
        return None
    if damaged and warn:
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
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() and _is_checkpoint(p):
            found.setdefault(int(name[len(PREFIX) :]), Checkpoint(p))
    return [found[k] for k in sorted(found)]


def _is_checkpoint(p: Path) -> bool:
    """A checkpoint folder, complete or not: one that lost its model.pt is still listed (and found damaged)."""
    return p.is_dir() and any((p / name).exists() for name in ("model.pt", MANIFEST, "trainer_state.json"))


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
    if _is_checkpoint(p):
        return Checkpoint(p)
    found = (best(p) if which == "best" else None) or latest(p)
    if found is None:
        below = runs_below(p)
        hint = f"; it holds the run folders {', '.join(below)}: give one of them" if below else ""
        raise FileNotFoundError(f"{p}: no checkpoint here (expected model.pt or {PREFIX}N/ folders){hint}")
    return found


def runs_below(folder: Path, depth: int = 4) -> list[str]:
    """Folders under `folder` (a regime's root, say) that hold checkpoints, as paths relative to it."""
    found: list[str] = []

    def walk(d: Path, left: int) -> None:
        try:
            children = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        if d != folder and any(c.name.startswith(PREFIX) and _is_checkpoint(c) for c in children):
            found.append(str(d.relative_to(folder)))
            return
        if left:
            for c in children:
                if c.name != BEST:
                    walk(c, left - 1)

    walk(folder, depth)
    return found
