"""NER benchmark: CoNLL-2003 English and WikiANN en/de/fr/nl as one `ner` task, mixed by the smoothed sampler.

Trains the pretrained multilingual encoder on the five training files at once (one tagging head, BIO,
first sub-word of each word; sampler p ∝ n^0.7 over the five datasets) for a fixed number of optimiser
steps, so a run is reproducible whatever else the machine is doing. Then it reloads the saved
checkpoint, as a user would, and tags the first N sentences of each dev set. It prints seqeval span
F1 per dataset, the target and realised sampling rates, and training and tagging speed.

    python benchmarks/ner_multilingual.py                     # full budget (about 10 min on 2 busy CPU cores)
    python benchmarks/ner_multilingual.py --quick             # smoke run (< 90 s)
    python benchmarks/ner_multilingual.py --steps 100 --dev-cap 200
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# OpenMP threads sleep rather than spin while waiting: on a CPU shared with other jobs, spinning
# threads that get descheduled made each training step about twice as slow. torch, which reads
# this when it loads, is imported later.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parents[1]
# (name, language, reader format, folder under ner/)
DATASETS = (
    ("conll2003", "en", "conll2003", "conll2003"),
    ("wikiann_en", "en", "wikiann", "wikiann/en"),
    ("wikiann_de", "de", "wikiann", "wikiann/de"),
    ("wikiann_fr", "fr", "wikiann", "wikiann/fr"),
    ("wikiann_nl", "nl", "wikiann", "wikiann/nl"),
)
MAX_LENGTH = 128  # sub-words per window; longer sentences are split at word boundaries
TEMPERATURE = 0.7
FULL_STEPS = 120
FULL_DEV_CAP = 500  # first N sentences of each dev set
FULL_BATCH = 32  # sentences (windows) per step
QUICK_STEPS = 3
QUICK_DEV_CAP = 16
QUICK_TRAIN_CAP = 64  # sentences read from each training file in a smoke run
QUICK_BATCH = 8


@dataclass
class Budget:
    steps: int
    dev_cap: int | None  # first N sentences of every dev set; None: all
    train_cap: int | None  # first N sentences of every training file; None: all
    batch_size: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder holding ner/")
    p.add_argument("--model", type=str, default=str(REPO.parent / "shared" / "models" / "multilingual-e5-small-q4"),
                   help="pretrained encoder (folder or hub name)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps (default {FULL_STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--dev-cap", type=int, default=None,
                   help=f"tag the first N sentences of each dev set (default {FULL_DEV_CAP}; --quick "
                        f"{QUICK_DEV_CAP}; 0: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"sentences per optimiser step (default {FULL_BATCH}; --quick {QUICK_BATCH})")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="S in p ∝ n^S over the datasets")
    p.add_argument("--encoder-lr", type=float, default=1e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice, one per core)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_STEPS} steps on the first {QUICK_TRAIN_CAP} sentences of each file")
    p.add_argument("--keep", type=Path, default=None, help="write the run (checkpoint, predictions) here instead "
                                                            "of a temporary folder that is removed at the end")
    return p.parse_args(argv)


def budget(args: argparse.Namespace) -> Budget:
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else FULL_STEPS)
    cap = args.dev_cap if args.dev_cap is not None else (QUICK_DEV_CAP if args.quick else FULL_DEV_CAP)
    size = args.batch_size or (QUICK_BATCH if args.quick else FULL_BATCH)
    return Budget(steps=steps, dev_cap=cap or None, train_cap=QUICK_TRAIN_CAP if args.quick else None,
                  batch_size=size)


def datasets(plan: Budget, train: bool) -> list[dict[str, Any]]:
    """Training: the train files (capped in smoke runs). Evaluation: the dev files, capped; the train
    paths stay listed so each dataset counts as in-language, but only dev splits are read."""
    out = []
    for name, lang, fmt, folder in DATASETS:
        entry: dict[str, Any] = {"language": lang, "name": name, "format": fmt, "train": f"ner/{folder}/train.txt"}
        if train:
            entry["max_examples"] = plan.train_cap
        else:
            entry.update(dev=f"ner/{folder}/dev.txt", max_examples=plan.dev_cap)
        out.append(entry)
    return out


def experiment_dict(args: argparse.Namespace, plan: Budget, out_dir: Path, train: bool) -> dict[str, Any]:
    """The experiment; for training it lists train splits only, so tagging is timed here, not in the trainer."""
    return {
        "name": "ner-multilingual-bench",
        "data_root": str(args.data.expanduser().resolve()),
        "encoder": {"name": _model_name(args.model), "max_length": MAX_LENGTH, "mix": "scalar",
                    "layer_dropout": 0.1, "dropout": 0.1},
        "tasks": {"ner": {"family": "ner", "options": {"scheme": "BIO", "crf": False},
                          "datasets": datasets(plan, train)}},
        "sampling": {"strategy": "smoothed", "smoothing": args.temperature, "batch_size": plan.batch_size},
        "train": {"seed": args.seed, "steps": plan.steps, "encoder_lr": args.encoder_lr, "head_lr": args.head_lr,
                  "warmup": 0.1, "precision": "fp32", "eval_batch_size": 64, "log_every": 10,
                  "keep_checkpoints": 1, "output_dir": str(out_dir / "run")},
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }


def _model_name(model: str) -> str:
    """A local folder as an absolute path (the checkpoint records it); anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


@dataclass
class Tagging:
    results: list[Any]
    seconds: float  # predict + finalize + score, all dev sets
    sentences: int
    subwords: int
    load_seconds: float  # checkpoint load, read and tokenise the dev sets


def tag_dev_sets(checkpoint: Path, args: argparse.Namespace, plan: Budget, out_dir: Path) -> Tagging:
    """Reload the checkpoint and tag every dev set, timing the tagging alone."""
    from mtl.config import experiment_from_dict
    from mtl.data import load_splits
    from mtl.evaluate import evaluate
    from mtl.inference import load

    t0 = time.perf_counter()
    loaded = load(checkpoint, device="cpu")
    exp = experiment_from_dict(experiment_dict(args, plan, out_dir, train=False))
    splits = load_splits(exp, loaded.families, ["dev"], fit=False, cache_dir=None)
    load_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    results = evaluate(loaded.model, loaded.families, splits, exp.train.eval_batch_size, loaded.device,
                       progress=False)
    return Tagging(
        results=results,
        seconds=time.perf_counter() - t1,
        sentences=sum(len(s.examples) for s in splits),
        subwords=sum(len(f["input_ids"]) for s in splits for f in s.features),
        load_seconds=load_seconds,
    )


def results_table(results: list[Any], trainer: Any) -> str:
    """Per dataset: training size, target and realised sampling rates, dev size and span P/R/F1; then the mean."""
    realised = trainer.sampler.realised_counts()
    drawn = max(1, sum(realised.values()))
    target = trainer.sampler.probabilities(0.0)
    train_size = {s.group: (len(s.examples), len(s.features)) for s in trainer.train_splits}
    head = ("dataset", "lang", "train sents", "windows", "target %", "realised %", "batches", "dev sents", "P", "R",
            "F1")
    rows = []
    for r in results:
        g = r.split.group
        sents, windows = train_size[g]
        rows.append((r.split.dataset.name, r.split.dataset.language, str(sents), str(windows),
                     f"{100 * target[g]:.2f}", f"{100 * realised.get(g, 0) / drawn:.2f}", str(realised.get(g, 0)),
                     str(len(r.predictions)), *(f"{r.metrics[k]:.2f}" for k in ("precision", "recall", "f1"))))
    means = [sum(r.metrics[k] for r in results) / len(results) for k in ("precision", "recall", "f1")]
    rows.append((f"mean ({len(results)})", "", "", "", "", "", "", "", *(f"{m:.2f}" for m in means)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    rule = "  ".join("-" * w for w in widths)
    lines.append(rule)
    for n, row in enumerate(rows):
        if n == len(results):
            lines.append(rule)
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def speed_report(stats: dict[str, float], steps: int, tagging: Tagging) -> str:
    per_s = tagging.sentences / max(tagging.seconds, 1e-9)
    return "\n".join([
        f"training: {steps} steps in {stats['train/seconds']:.0f} s = {stats['train/examples_per_second']:.1f} "
        f"sentences/s (windows of <= {MAX_LENGTH} sub-words), {stats['train/tokens_per_second']:.0f} sub-words/s",
        f"tagging:  {tagging.sentences} dev sentences ({tagging.subwords} sub-words) in {tagging.seconds:.1f} s = "
        f"{per_s:.1f} sentences/s, {tagging.subwords / max(tagging.seconds, 1e-9):.0f} sub-words/s "
        f"(forward, decoding and seqeval scoring)",
        f"          (loading the checkpoint and tokenising the dev sets, not counted: {tagging.load_seconds:.1f} s)",
    ])


def run(args: argparse.Namespace, out_dir: Path) -> str:
    import torch

    from mtl.config import experiment_from_dict
    from mtl.trainer import Trainer

    plan = budget(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cap = f"first {plan.dev_cap} sentences of each" if plan.dev_cap else "all sentences"
    print(f"NER benchmark: {plan.steps} steps x {plan.batch_size} sentences, smoothed sampling S = "
          f"{args.temperature:g}, encoder {args.model}, max_length {MAX_LENGTH}, lr {args.encoder_lr:g} (encoder) / "
          f"{args.head_lr:g} (head), {torch.get_num_threads()} torch threads; dev sets: {cap}", flush=True)
    trainer = Trainer(experiment_from_dict(experiment_dict(args, plan, out_dir, train=True)))
    outcome = trainer.fit()
    if outcome.checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint under {outcome.output_dir}")
    tagging = tag_dev_sets(outcome.checkpoint, args, plan, out_dir)
    report = "\n\n".join([
        f"Dev results after {outcome.steps} steps ({cap}; seqeval span precision/recall/F1, conlleval-compatible; "
        f"sampling rates are shares of the {sum(trainer.sampler.realised_counts().values())} batches drawn):",
        results_table(tagging.results, trainer),
        speed_report(outcome.train_stats, outcome.steps, tagging),
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
        out_dir = Path(tempfile.mkdtemp(prefix="ner-bench-"))
        try:
            run(args, out_dir)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
