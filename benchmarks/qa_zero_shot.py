"""QA benchmark: extractive QA trained on English SQuAD-format data, evaluated in English and zero-shot on DRCD.

Trains the pretrained multilingual encoder on `<data>/squad/train.json` (one `qa` task, sliding windows
with a doc stride) for a fixed number of optimiser steps, so a run is reproducible whatever else the
machine is doing. Then it reloads the saved checkpoint, as a user would, and answers the English dev
questions (`squad/dev.json`, in-language) and the Traditional Chinese DRCD sample (`drcd/dev.json`,
zero-shot: no Chinese training data; character-level EM/F1). It prints EM/F1 per dataset, the
zero-shot / in-language F1 ratio, and training and prediction speed.

    python benchmarks/qa_zero_shot.py                         # full budget (about 14 min on 2 busy CPU cores)
    python benchmarks/qa_zero_shot.py --quick                 # smoke run (< 90 s)
    python benchmarks/qa_zero_shot.py --steps 40 --dev-cap 100
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
TRAIN = ("squad", "en", "squad/train.json")
DEV = (("squad", "en", "squad/dev.json"), ("drcd", "zh-TW", "drcd/dev.json"))
# 256-token windows instead of the usual 384: a third fewer tokens per window, so more updates fit
# the CPU budget; with a 128-token stride every answer still lies whole inside some window.
MAX_LENGTH = 256
DOC_STRIDE = 128
FULL_STEPS = 50
FULL_DEV_CAP = 200  # first N questions of each dev set (the DRCD sample has 200)
FULL_BATCH = 8  # windows per step: small batches give more updates from a small budget
QUICK_STEPS = 3
QUICK_DEV_CAP = 8
QUICK_TRAIN_CAP = 48  # questions read from the training file in a smoke run
QUICK_BATCH = 4


@dataclass
class Budget:
    steps: int
    dev_cap: int | None  # first N questions of every dev set; None: all
    train_cap: int | None  # first N training questions; None: all
    batch_size: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="folder holding squad/ and drcd/")
    p.add_argument("--model", type=str, default=str(REPO.parent / "shared" / "models" / "multilingual-e5-small-q4"),
                   help="pretrained encoder (folder or hub name)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps (default {FULL_STEPS}; --quick {QUICK_STEPS})")
    p.add_argument("--dev-cap", type=int, default=None,
                   help=f"answer the first N questions of each dev set (default {FULL_DEV_CAP}; --quick "
                        f"{QUICK_DEV_CAP}; 0: all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"windows per optimiser step (default {FULL_BATCH}; --quick {QUICK_BATCH})")
    p.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per window, question included")
    p.add_argument("--doc-stride", type=int, default=DOC_STRIDE, help="tokens shared by consecutive windows")
    p.add_argument("--encoder-lr", type=float, default=2e-4)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: torch's choice, one per core)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_STEPS} steps on the first {QUICK_TRAIN_CAP} training questions")
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
    """Training: the English file alone. Evaluation: both dev files, capped (the train path only fixes the
    training language, so English counts as in-language and DRCD as zero-shot; it is not read)."""
    name, lang, path = TRAIN
    if train:
        return [{"language": lang, "name": name, "train": path, "max_examples": plan.train_cap}]
    out: list[dict[str, Any]] = []
    for dev_name, dev_lang, dev_path in DEV:
        entry: dict[str, Any] = {"language": dev_lang, "name": dev_name, "dev": dev_path, "max_examples": plan.dev_cap}
        if dev_name == name:
            entry["train"] = path
        out.append(entry)
    return out


def experiment_dict(args: argparse.Namespace, plan: Budget, out_dir: Path, train: bool) -> dict[str, Any]:
    """The experiment; for training it lists the train split only, so prediction is timed here."""
    return {
        "name": "qa-zero-shot-bench",
        "data_root": str(args.data.expanduser().resolve()),
        "encoder": {"name": _model_name(args.model), "max_length": args.max_length, "mix": "scalar",
                    "layer_dropout": 0.1, "dropout": 0.1},
        "tasks": {"qa": {"family": "qa",
                         "options": {"max_length": args.max_length, "doc_stride": args.doc_stride, "n_best": 20,
                                     "max_answer_length": 30},
                         "datasets": datasets(plan, train)}},
        "sampling": {"strategy": "proportional", "batch_size": plan.batch_size},
        "train": {"seed": args.seed, "steps": plan.steps, "encoder_lr": args.encoder_lr, "head_lr": args.head_lr,
                  "warmup": 0.1, "precision": "fp32", "eval_batch_size": 32, "log_every": 10,
                  "keep_checkpoints": 1, "output_dir": str(out_dir / "run")},
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }


def _model_name(model: str) -> str:
    """A local folder as an absolute path (the checkpoint records it); anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


@dataclass
class Prediction:
    results: list[Any]
    seconds: float  # predict + finalize + score, all dev sets
    questions: int
    windows: int
    load_seconds: float  # checkpoint load, read and tokenise the dev sets


def answer_dev_sets(checkpoint: Path, args: argparse.Namespace, plan: Budget, out_dir: Path) -> Prediction:
    """Reload the checkpoint and answer every dev set, timing the prediction alone."""
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
    return Prediction(
        results=results,
        seconds=time.perf_counter() - t1,
        questions=sum(len(s.examples) for s in splits),
        windows=sum(len(s.features) for s in splits),
        load_seconds=load_seconds,
    )


def results_table(results: list[Any]) -> str:
    """Dataset, language, role, questions, windows, EM and F1; then the zero-shot / in-language F1 ratio."""
    head = ("dataset", "lang", "role", "questions", "windows", "EM", "F1")
    rows = [(r.split.dataset.name, r.split.dataset.language, "zero-shot" if r.split.zero_shot else "in-language",
             str(len(r.split.examples)), str(len(r.split.features)), f"{r.metrics['exact_match']:.2f}",
             f"{r.metrics['f1']:.2f}") for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in rows]
    lines.append("")
    lines.append(f_ratio_line(results))
    return "\n".join(lines)


def f_ratio_line(results: list[Any]) -> str:
    """Mean zero-shot F1 over mean in-language F1: the share of English quality that crosses over."""
    inside = [r.metrics["f1"] for r in results if not r.split.zero_shot]
    zero = [r.metrics["f1"] for r in results if r.split.zero_shot]
    if not inside or not zero:
        return "zero-shot / in-language F1: -"
    f_in, f_zero = sum(inside) / len(inside), sum(zero) / len(zero)
    ratio = f"{f_zero / f_in:.3f}" if f_in > 0 else "-"
    return f"zero-shot / in-language F1: {f_zero:.2f} / {f_in:.2f} = {ratio}"


def speed_report(stats: dict[str, float], steps: int, train_split: Any, pred: Prediction) -> str:
    questions, windows = len(train_split.examples), len(train_split.features)
    per_q = windows / max(1, questions)
    win_s = stats["train/examples_per_second"]
    return "\n".join([
        f"training:   {steps} steps in {stats['train/seconds']:.0f} s = {win_s:.2f} windows/s "
        f"(≈ {win_s / per_q:.2f} questions/s at the training file's {per_q:.3f} windows per question: "
        f"{windows} windows from {questions} questions), {stats['train/tokens_per_second']:.0f} tokens/s",
        f"prediction: {pred.questions} dev questions ({pred.windows} windows) in {pred.seconds:.1f} s = "
        f"{pred.questions / max(pred.seconds, 1e-9):.2f} questions/s, {pred.windows / max(pred.seconds, 1e-9):.2f} "
        f"windows/s (forward, n-best spans, answer text and scoring)",
        f"            (loading the checkpoint and tokenising the dev sets, not counted: {pred.load_seconds:.1f} s)",
    ])


def run(args: argparse.Namespace, out_dir: Path) -> str:
    import torch

    from mtl.config import experiment_from_dict
    from mtl.trainer import Trainer

    plan = budget(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cap = f"first {plan.dev_cap} questions of each" if plan.dev_cap else "all questions"
    print(f"QA benchmark: {plan.steps} steps x {plan.batch_size} windows, windows of {args.max_length} tokens "
          f"with stride {args.doc_stride}, encoder {args.model}, lr {args.encoder_lr:g} (encoder) / "
          f"{args.head_lr:g} (head), {torch.get_num_threads()} torch threads; dev sets: {cap}", flush=True)
    trainer = Trainer(experiment_from_dict(experiment_dict(args, plan, out_dir, train=True)))
    outcome = trainer.fit()
    if outcome.checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint under {outcome.output_dir}")
    pred = answer_dev_sets(outcome.checkpoint, args, plan, out_dir)
    report = "\n\n".join([
        f"Dev results after {outcome.steps} steps ({cap}; SQuAD v1.1 EM/F1, character-level for DRCD):",
        results_table(pred.results),
        speed_report(outcome.train_stats, outcome.steps, trainer.train_splits[0], pred),
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
        out_dir = Path(tempfile.mkdtemp(prefix="qa-bench-"))
        try:
            run(args, out_dir)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
