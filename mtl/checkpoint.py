"""Checkpoints: written atomically, complete enough to resume exactly or to predict on any device."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "checkpoint-"


@dataclass
class Checkpoint:
    path: Path

    @property
    def step(self) -> int:
        return int(self.path.name[len(PREFIX) :])

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
) -> Path:
    """Write everything into a temporary folder, then rename it into place in one step."""
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".tmp-{PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
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
    for f in tmp.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _rotate(output_dir, keep)
    return final


def _rotate(output_dir: Path, keep: int) -> None:
    found = sorted(list_checkpoints(output_dir), key=lambda c: c.step)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old.path, ignore_errors=True)


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    if not output_dir.is_dir():
        return []
    out = []
    for p in output_dir.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit() and (p / "model.pt").exists():
            out.append(Checkpoint(p))
    return sorted(out, key=lambda c: c.step)


def latest(output_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve(path: str | Path) -> Checkpoint:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / "model.pt").exists():
        return Checkpoint(p)
    found = latest(p)
    if found is None:
        raise FileNotFoundError(f"{p}: no checkpoint here (expected model.pt or {PREFIX}N/ folders)")
    return found
