"""UD benchmark: one multilingual encoder, five training treebanks, ten dev sets.

Trains the pretrained multilingual encoder on en_ewt, fr_sequoia, mr_ufal, cy_ccg and fo_farpahc at
once (one `ud` task; UPOS, UFeats, lemma and biaffine dependency heads; smoothed sampler, S = 0.7)
for a fixed number of optimiser steps, so a run is reproducible whatever else the machine is doing.
Then it reloads the saved checkpoint, as a user would, and parses every dev set: the trained
treebanks and fr_gsd in-language, de_gsd, zh_gsd, zh_gsdsimp and ja_gsd zero-shot (no training data
in their language). It prints a per-treebank table, training and parsing speed, and the share of
parsing time spent in MST (Chu-Liu-Edmonds) decoding.

    python benchmarks/ud_multilingual.py                      # full budget (about 10-15 min on 2 CPU cores)
    python benchmarks/ud_multilingual.py --quick              # smoke run (< 90 s)
    python benchmarks/ud_multilingual.py --steps 2000 --dev-cap 0 --threads 0   # bigger budget, every dev sentence
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parents[1]
TRAINED = (("en_ewt", "en"), ("fr_sequoia", "fr"), ("mr_ufal", "mr"), ("cy_ccg", "cy"), ("fo_farpahc", "fo"))
DEV_ONLY = (("de_gsd", "de"), ("fr_gsd", "fr"), ("zh_gsd", "zh"), ("zh_gsdsimp", "zh"), ("ja_gsd", "ja"))
COLUMNS = ("UPOS", "UFeats", "Lemmas", "UAS", "LAS")
# XPOS tagsets are treebank-specific (and absent from fr_sequoia and mr_ufal), so no XPOS head.
HEADS = ["upos", "feats", "lemma", "deps"]
# Longest training sentence is 261 sub-words (fr_sequoia), dev 230 (ja_gsd): 512 (the encoder's
# limit) lets the parser read every sentence in one window, so none is skipped.
MAX_LENGTH = 512
FULL_STEPS = 200
FULL_DEV_CAP = 100
FULL_BATCH = (16, 1024)  # sentences, tokens: small batches give more updates from a small budget
QUICK_STEPS = 3
QUICK_DEV_CAP = 8
QUICK_BATCH = (8, 512)  # sentences, tokens
QUICK_TRAIN_CAP = 200  # first N training sentences per treebank: less to tokenise in a smoke run


@dataclass
class Budget:
    steps: int
    dev_cap: int | None  # first N sentences of every dev set; None: all
    batch_size: int
    max_tokens: int
    train_cap: int | None = None  # first N sentences of every training treebank; None: all


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder holding ud/<treebank>/")
    p.add_argument("--model", type=str, default=str(REPO.parent / "shared" / "models" / "multilingual-e5-small-q4"),
                   help="pretrained encoder (folder or hub name)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps (default {FULL_STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--dev-cap", type=int, default=None,
                   help=f"parse the first N sentences of every dev set (default {FULL_DEV_CAP}; --quick "
                        f"{QUICK_DEV_CAP}; 0: all)")
    p.add_argument("--batch-size", type=int, default=None, help="sentences per batch, at most (default 16; --quick 8)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="token budget per batch, longest x count (default 1024; --quick 512)")
    # Higher than UDify's 5e-5 / 1e-3: a budget of a few hundred steps needs faster learning.
    p.add_argument("--encoder-lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a 2-core machine shared with other jobs, two threads per "
                        "process wait on each other and run 2-3x slower; 0: torch's choice, for an idle machine)")
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps, tiny dev sets")
    p.add_argument("--keep", type=Path, default=None, help="write the run (checkpoint, predictions) here instead "
                                                            "of a temporary folder that is removed at the end")
    return p.parse_args(argv)


def budget(args: argparse.Namespace) -> Budget:
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else FULL_STEPS)
    cap = args.dev_cap if args.dev_cap is not None else (QUICK_DEV_CAP if args.quick else FULL_DEV_CAP)
    size, tokens = QUICK_BATCH if args.quick else FULL_BATCH
    return Budget(steps=steps, dev_cap=cap or None, batch_size=args.batch_size or size,
                  max_tokens=args.max_tokens or tokens, train_cap=QUICK_TRAIN_CAP if args.quick else None)


def datasets(train: bool, plan: Budget) -> list[dict[str, Any]]:
    """Dataset entries (paths relative to data_root): training treebanks, plus every dev set when not `train`."""
    out: list[dict[str, Any]] = []
    for name, lang in TRAINED:
        entry: dict[str, Any] = {"language": lang, "name": name, "train": f"ud/{name}/train.conllu"}
        if train and plan.train_cap:
            entry["max_examples"] = plan.train_cap
        if not train:
            entry["dev"] = f"ud/{name}/dev.conllu"
        out.append(entry)
    if not train:
        out += [{"language": lang, "name": name, "dev": f"ud/{name}/dev.conllu"} for name, lang in DEV_ONLY]
        for entry in out:
            entry["max_examples"] = plan.dev_cap  # only dev splits are read for evaluation
    return out


def experiment_dict(args: argparse.Namespace, plan: Budget, out_dir: Path, train: bool) -> dict[str, Any]:
    """The experiment; for training it lists train splits only, so parsing is timed here, not in the trainer."""
    return {
        "name": "ud-multilingual-bench",
        "data_root": str(args.data.expanduser().resolve()),
        "encoder": {"name": _model_name(args.model), "max_length": MAX_LENGTH, "mix": "scalar", "layer_dropout": 0.1,
                    "dropout": 0.2},
        "tasks": {"ud": {"family": "ud", "options": {"heads": HEADS, "decoder": "mst"},
                         "datasets": datasets(train, plan)}},
        "sampling": {"strategy": "smoothed", "smoothing": 0.7, "batch_size": plan.batch_size,
                     "max_tokens": plan.max_tokens},
        "train": {"seed": args.seed, "steps": plan.steps, "encoder_lr": args.encoder_lr, "head_lr": args.head_lr,
                  "warmup": 0.1, "precision": "fp32", "eval_batch_size": 64, "log_every": 25,
                  "keep_checkpoints": 1, "output_dir": str(out_dir / "run")},
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }


def _model_name(model: str) -> str:
    """A local folder as an absolute path (the checkpoint records it); anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


@contextmanager
def timed_mst() -> Iterator[list[float]]:
    """Accumulate the seconds spent in tasks.ud's MST decoder while the block runs."""
    import tasks.ud as ud

    spent = [0.0]
    original: Callable[..., Any] = ud.mst_heads

    def wrapper(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    ud.mst_heads = wrapper
    try:
        yield spent
    finally:
        ud.mst_heads = original


@dataclass
class Parsing:
    results: list[Any]
    seconds: float  # predict + finalize + score, all dev sets
    mst_seconds: float
    sentences: int
    subwords: int
    load_seconds: float  # checkpoint load, read and tokenise the dev sets


def parse_dev_sets(checkpoint: Path, args: argparse.Namespace, plan: Budget, out_dir: Path) -> Parsing:
    """Reload the checkpoint and evaluate every dev set, timing the parse alone."""
    from mtl.config import experiment_from_dict
    from mtl.data import load_splits
    from mtl.evaluate import evaluate
    from mtl.inference import load

    t0 = time.perf_counter()
    loaded = load(checkpoint, device="cpu")
    exp = experiment_from_dict(experiment_dict(args, plan, out_dir, train=False))
    splits = load_splits(exp, loaded.families, ["dev"], fit=False, cache_dir=None)
    load_seconds = time.perf_counter() - t0
    with timed_mst() as mst:
        t1 = time.perf_counter()
        results = evaluate(loaded.model, loaded.families, splits, exp.train.eval_batch_size, loaded.device,
                           progress=False)
        seconds = time.perf_counter() - t1
    return Parsing(
        results=results,
        seconds=seconds,
        mst_seconds=mst[0],
        sentences=sum(len(s.examples) for s in splits),
        subwords=sum(len(f["input_ids"]) for s in splits for f in s.features),
        load_seconds=load_seconds,
    )


def _cell(metrics: dict[str, float], key: str) -> str:
    return f"{metrics[key]:.2f}" if key in metrics else "-"


def _mean(rows: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [r[key] for r in rows if key in r]
    return {key: sum(values) / len(values)} if values else {}


def results_table(results: list[Any]) -> str:
    """Treebank, language, role, sentences and the five headline metrics; means per role at the end."""
    head = ("treebank", "lang", "role", "sents", *COLUMNS)
    rows = []
    by_role: dict[str, list[dict[str, float]]] = {"in-language": [], "zero-shot": []}
    for r in results:
        role = "zero-shot" if r.split.zero_shot else "in-language"
        by_role[role].append(r.metrics)
        rows.append((r.split.dataset.name, r.split.dataset.language, role, str(len(r.predictions)),
                     *(_cell(r.metrics, c) for c in COLUMNS)))
    for role, metrics in by_role.items():
        if metrics:
            mean = {k: v for c in COLUMNS for k, v in _mean(metrics, c).items()}
            rows.append((f"mean ({len(metrics)})", "", role, "", *(_cell(mean, c) for c in COLUMNS)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for n, row in enumerate(rows):
        if n == len(results):
            lines.append("  ".join("-" * w for w in widths))
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def speed_report(stats: dict[str, float], steps: int, parsing: Parsing) -> str:
    per_s = parsing.sentences / max(parsing.seconds, 1e-9)
    share = 100.0 * parsing.mst_seconds / max(parsing.seconds, 1e-9)
    return "\n".join([
        f"training: {steps} steps in {stats['train/seconds']:.0f} s = {stats['train/examples_per_second']:.1f} "
        f"sentences/s, {stats['train/tokens_per_second']:.0f} sub-words/s",
        f"parsing:  {parsing.sentences} dev sentences ({parsing.subwords} sub-words) in {parsing.seconds:.1f} s = "
        f"{per_s:.1f} sentences/s, {parsing.subwords / max(parsing.seconds, 1e-9):.0f} sub-words/s "
        f"(tagging, MST decoding, lemmas and scoring); MST decoding {parsing.mst_seconds:.1f} s = {share:.1f}%",
        f"          (loading the checkpoint and tokenising the dev sets, not counted: {parsing.load_seconds:.1f} s)",
    ])


def run(args: argparse.Namespace, out_dir: Path) -> str:
    import torch

    from mtl.config import experiment_from_dict
    from mtl.trainer import train

    plan = budget(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cap = f"first {plan.dev_cap} sentences of each" if plan.dev_cap else "all sentences"
    print(f"UD benchmark: {plan.steps} steps, batch <= {plan.batch_size} sentences and <= {plan.max_tokens} "
          f"tokens, encoder {args.model}, max_length {MAX_LENGTH}, {torch.get_num_threads()} torch threads; "
          f"dev sets: {cap}", flush=True)
    exp = experiment_from_dict(experiment_dict(args, plan, out_dir, train=True))
    outcome = train(exp)
    if outcome.checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint under {outcome.output_dir}")
    parsing = parse_dev_sets(outcome.checkpoint, args, plan, out_dir)
    report = "\n\n".join([
        f"Dev results after {outcome.steps} steps ({cap}; UD 2018 shared-task metrics, gold tokenisation):",
        results_table(parsing.results),
        speed_report(outcome.train_stats, outcome.steps, parsing),
    ])
    print("\n" + report, flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mtl", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)
    t0 = time.perf_counter()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args, args.keep.resolve())
    else:
        out_dir = Path(tempfile.mkdtemp(prefix="ud-bench-"))
        try:
            run(args, out_dir)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
