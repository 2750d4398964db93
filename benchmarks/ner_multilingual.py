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
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from mtl.core.table import format_table

common.setdefault_env()  # before torch loads

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
DEFAULTS = common.Defaults(unit="sentences", steps=(120, 3), dev_cap=(500, 16), batch=(32, 8),
                           batch_help="sentences (windows) per optimiser step", quick_train_cap=64, lrs=(1e-4, 1e-3))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="S in p ∝ n^S over the datasets")


def datasets(plan: common.Budget, train: bool) -> list[dict[str, Any]]:
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


def experiment_dict(args: argparse.Namespace, plan: common.Budget, out_dir: Path, train: bool) -> dict[str, Any]:
    """The experiment; for training it lists train splits only, so tagging is timed here, not in the trainer."""
    return common.experiment_dict(
        "ner-multilingual-bench", args, out_dir, plan.steps,
        encoder={"max_length": MAX_LENGTH, "mix": "scalar", "layer_dropout": 0.1, "dropout": 0.1},
        tasks={"ner": {"family": "ner", "options": {"scheme": "BIO", "crf": False}, "datasets": datasets(plan, train)}},
        sampling={"strategy": "smoothed", "smoothing": args.temperature, "batch_size": plan.batch_size},
        train={"eval_batch_size": 64, "log_every": 10},
    )


def banner(args: argparse.Namespace, plan: common.Budget, cap: str) -> str:
    return (f"NER benchmark: {plan.steps} steps x {plan.batch_size} sentences, smoothed sampling S = "
            f"{args.temperature:g}, encoder {args.model}, max_length {MAX_LENGTH}, lr {args.encoder_lr:g} (encoder) / "
            f"{args.head_lr:g} (head), {{threads}} torch threads; dev sets: {cap}")


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
    return format_table(head, rows, left=2, rules_before=(len(results),))


def speed_report(stats: dict[str, float], steps: int, tagging: common.DevRun) -> str:
    per_s = tagging.examples / max(tagging.seconds, 1e-9)
    return common.speed_lines(
        f"training: {steps} steps in {stats['train/seconds']:.0f} s = {stats['train/examples_per_second']:.1f} "
        f"sentences/s (windows of <= {MAX_LENGTH} sub-words), {stats['train/tokens_per_second']:.0f} sub-words/s",
        f"tagging:  {tagging.examples} dev sentences ({tagging.subwords} sub-words) in {tagging.seconds:.1f} s = "
        f"{per_s:.1f} sentences/s, {tagging.subwords / max(tagging.seconds, 1e-9):.0f} sub-words/s "
        f"(forward, decoding and seqeval scoring)",
        tagging,
    )


def report(trainer: Any, outcome: Any, tagging: common.DevRun, _: Any, cap: str) -> list[str]:
    drawn = sum(trainer.sampler.realised_counts().values())
    return [f"Dev results after {outcome.steps} steps ({cap}; seqeval span precision/recall/F1, "
            f"conlleval-compatible; sampling rates are shares of the {drawn} batches drawn):",
            results_table(tagging.results, trainer), speed_report(outcome.train_stats, outcome.steps, tagging)]


BENCHMARK = common.Benchmark(__doc__, DEFAULTS, "folder holding ner/", "ner-bench-",
                             experiment_dict, banner, report, add_args)

if __name__ == "__main__":
    common.main(BENCHMARK)
