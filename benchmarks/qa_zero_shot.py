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
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from mtl.core.table import format_table

common.setdefault_env()  # before torch loads

TRAIN = ("squad", "en", "squad/train.json")
DEV = (("squad", "en", "squad/dev.json"), ("drcd", "zh-TW", "drcd/dev.json"))
# 256-token windows instead of the usual 384: a third fewer tokens per window, so more updates fit
# the CPU budget; with a 128-token stride every answer still lies whole inside some window.
MAX_LENGTH = 256
DOC_STRIDE = 128
# The DRCD sample has 200 questions; small batches give more updates from a small budget.
DEFAULTS = common.Defaults(unit="questions", steps=(50, 3), dev_cap=(200, 8), batch=(8, 4),
                           batch_help="windows per optimiser step", quick_train_cap=48, lrs=(2e-4, 1e-3))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per window, question included")
    p.add_argument("--doc-stride", type=int, default=DOC_STRIDE, help="tokens shared by consecutive windows")


def datasets(plan: common.Budget, train: bool) -> list[dict[str, Any]]:
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


def experiment_dict(args: argparse.Namespace, plan: common.Budget, out_dir: Path, train: bool) -> dict[str, Any]:
    """The experiment; for training it lists the train split only, so prediction is timed here."""
    options = {"max_length": args.max_length, "doc_stride": args.doc_stride, "n_best": 20, "max_answer_length": 30}
    return common.experiment_dict(
        "qa-zero-shot-bench", args, out_dir, plan.steps,
        encoder={"max_length": args.max_length, "mix": "scalar", "layer_dropout": 0.1, "dropout": 0.1},
        tasks={"qa": {"family": "qa", "options": options, "datasets": datasets(plan, train)}},
        sampling={"strategy": "proportional", "batch_size": plan.batch_size},
        train={"eval_batch_size": 32, "log_every": 10},
    )


def banner(args: argparse.Namespace, plan: common.Budget, cap: str) -> str:
    return (f"QA benchmark: {plan.steps} steps x {plan.batch_size} windows, windows of {args.max_length} tokens "
            f"with stride {args.doc_stride}, encoder {args.model}, lr {args.encoder_lr:g} (encoder) / "
            f"{args.head_lr:g} (head), {{threads}} torch threads; dev sets: {cap}")


def results_table(results: list[Any]) -> str:
    """Dataset, language, role, questions, windows, EM and F1; then the zero-shot / in-language F1 ratio."""
    head = ("dataset", "lang", "role", "questions", "windows", "EM", "F1")
    rows = [(r.split.dataset.name, r.split.dataset.language, "zero-shot" if r.split.zero_shot else "in-language",
             str(len(r.split.examples)), str(len(r.split.features)), f"{r.metrics['exact_match']:.2f}",
             f"{r.metrics['f1']:.2f}") for r in results]
    return format_table(head, rows, left=3) + "\n\n" + f_ratio_line(results)


def f_ratio_line(results: list[Any]) -> str:
    """Mean zero-shot F1 over mean in-language F1: the share of English quality that crosses over."""
    inside = [r.metrics["f1"] for r in results if not r.split.zero_shot]
    zero = [r.metrics["f1"] for r in results if r.split.zero_shot]
    if not inside or not zero:
        return "zero-shot / in-language F1: -"
    f_in, f_zero = sum(inside) / len(inside), sum(zero) / len(zero)
    ratio = f"{f_zero / f_in:.3f}" if f_in > 0 else "-"
    return f"zero-shot / in-language F1: {f_zero:.2f} / {f_in:.2f} = {ratio}"


def speed_report(stats: dict[str, float], steps: int, train_split: Any, pred: common.DevRun) -> str:
    questions, windows = len(train_split.examples), len(train_split.features)
    per_q = windows / max(1, questions)
    win_s = stats["train/examples_per_second"]
    return common.speed_lines(
        f"training:   {steps} steps in {stats['train/seconds']:.0f} s = {win_s:.2f} windows/s "
        f"(≈ {win_s / per_q:.2f} questions/s at the training file's {per_q:.3f} windows per question: "
        f"{windows} windows from {questions} questions), {stats['train/tokens_per_second']:.0f} tokens/s",
        f"prediction: {pred.examples} dev questions ({pred.features} windows) in {pred.seconds:.1f} s = "
        f"{pred.examples / max(pred.seconds, 1e-9):.2f} questions/s, {pred.features / max(pred.seconds, 1e-9):.2f} "
        f"windows/s (forward, n-best spans, answer text and scoring)",
        pred,
    )


def report(trainer: Any, outcome: Any, pred: common.DevRun, _: Any, cap: str) -> list[str]:
    speed = speed_report(outcome.train_stats, outcome.steps, trainer.train_splits[0], pred)
    return [f"Dev results after {outcome.steps} steps ({cap}; SQuAD v1.1 EM/F1, character-level for DRCD):",
            results_table(pred.results), speed]


BENCHMARK = common.Benchmark(__doc__, DEFAULTS, "folder holding squad/ and drcd/", "qa-bench-",
                             experiment_dict, banner, report, add_args)

if __name__ == "__main__":
    common.main(BENCHMARK)
