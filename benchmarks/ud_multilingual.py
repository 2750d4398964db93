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
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from mtl.core.table import format_table

common.setdefault_env()  # before torch loads

TRAINED = (("en_ewt", "en"), ("fr_sequoia", "fr"), ("mr_ufal", "mr"), ("cy_ccg", "cy"), ("fo_farpahc", "fo"))
DEV_ONLY = (("de_gsd", "de"), ("fr_gsd", "fr"), ("zh_gsd", "zh"), ("zh_gsdsimp", "zh"), ("ja_gsd", "ja"))
COLUMNS = ("UPOS", "UFeats", "Lemmas", "UAS", "LAS")
# XPOS tagsets are treebank-specific (and absent from fr_sequoia and mr_ufal), so no XPOS head.
HEADS = ["upos", "feats", "lemma", "deps"]
# Longest training sentence is 261 sub-words (fr_sequoia), dev 230 (ja_gsd): 512 (the encoder's
# limit) lets the parser read every sentence in one window, so none is skipped.
MAX_LENGTH = 512
# Small batches give more updates from a small budget; a smoke run reads the first 200 training sentences
# of each treebank (less to tokenise). Learning rates higher than UDify's 5e-5 / 1e-3: a budget of a few
# hundred steps needs faster learning.
DEFAULTS = common.Defaults(unit="sentences", steps=(200, 3), dev_cap=(100, 8), batch=(16, 8),
                           batch_help="sentences per batch, at most", quick_train_cap=200, lrs=(1e-4, 2e-3),
                           threads=1)
MAX_TOKENS = (1024, 512)  # full, --quick


THREADS_HELP = ("torch threads (default 1: on a 2-core machine shared with other jobs, two threads per process wait "
                "on each other and run 2-3x slower; 0: torch's choice, for an idle machine)")


def max_tokens(args: argparse.Namespace) -> int:
    return args.max_tokens or MAX_TOKENS[1 if args.quick else 0]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"token budget per batch, longest x count (default {MAX_TOKENS[0]}; --quick {MAX_TOKENS[1]})")


def datasets(train: bool, plan: common.Budget) -> list[dict[str, Any]]:
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


def experiment_dict(args: argparse.Namespace, plan: common.Budget, out_dir: Path, train: bool) -> dict[str, Any]:
    """The experiment; for training it lists train splits only, so parsing is timed here, not in the trainer."""
    return common.experiment_dict(
        "ud-multilingual-bench", args, out_dir, plan.steps,
        encoder={"max_length": MAX_LENGTH, "layer_dropout": 0.1, "dropout": 0.2},
        tasks={"ud": {"family": "ud", "options": {"heads": HEADS, "decoder": "mst"},
                      "datasets": datasets(train, plan)}},
        sampling={"strategy": "smoothed", "smoothing": 0.7, "batch_size": plan.batch_size,
                  "max_tokens": max_tokens(args)},
        train={"eval_batch_size": 64, "log_every": 25},
    )


def banner(args: argparse.Namespace, plan: common.Budget, cap: str) -> str:
    return (f"UD benchmark: {plan.steps} steps, batch <= {plan.batch_size} sentences and <= {max_tokens(args)} "
            f"tokens, encoder {args.model}, max_length {MAX_LENGTH}, {{threads}} torch threads; dev sets: {cap}")


@contextmanager
def timed_mst() -> Iterator[list[float]]:
    """Accumulate the seconds spent in the UD head's MST decoder while the block runs."""
    import tasks._ud_head as ud

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
    return format_table(head, rows, left=3, rules_before=(len(results),))


def speed_report(stats: dict[str, float], steps: int, parsing: common.DevRun, mst_seconds: float) -> str:
    per_s = parsing.examples / max(parsing.seconds, 1e-9)
    share = 100.0 * mst_seconds / max(parsing.seconds, 1e-9)
    return common.speed_lines(
        f"training: {steps} steps in {stats['train/seconds']:.0f} s = {stats['train/examples_per_second']:.1f} "
        f"sentences/s, {stats['train/tokens_per_second']:.0f} sub-words/s",
        f"parsing:  {parsing.examples} dev sentences ({parsing.subwords} sub-words) in {parsing.seconds:.1f} s = "
        f"{per_s:.1f} sentences/s, {parsing.subwords / max(parsing.seconds, 1e-9):.0f} sub-words/s "
        f"(tagging, MST decoding, lemmas and scoring); MST decoding {mst_seconds:.1f} s = {share:.1f}%",
        parsing,
    )


def report(_: Any, outcome: Any, parsing: common.DevRun, mst: list[float], cap: str) -> list[str]:
    return [f"Dev results after {outcome.steps} steps ({cap}; UD 2018 shared-task metrics, gold tokenisation):",
            results_table(parsing.results), speed_report(outcome.train_stats, outcome.steps, parsing, mst[0])]


BENCHMARK = common.Benchmark(__doc__, DEFAULTS, "folder holding ud/<treebank>/", "ud-bench-",
                             experiment_dict, banner, report, add_args, threads_help=THREADS_HELP, timing=timed_mst)

if __name__ == "__main__":
    common.main(BENCHMARK)
