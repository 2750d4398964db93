"""Regimes benchmark: which training strategy, at a stated compute, on real data with a pretrained encoder.

Three parts, each an `mtl` regime run with the multilingual encoder in ../shared/models:

  t5        T5's comparison on GLUE (SST-2, MRPC, RTE, STS-B): single-task fine-tuning, multi-task
            training, multi-task then fine-tuning, and leave-one-out for the small tasks (RTE, MRPC);
            with --mlm also masked LM on the SST-2 sentences (a fresh MLM head: the encoder has no
            trained one) in the multi-task stages, MLM pre-training and supervised-only pre-training.
            The table gives each regime's optimiser steps and training tokens beside its
            dev scores, so unequal compute is plain to see.
  ud        Low-resource UD at equal steps: each of mr_ufal, cy_ccg and fo_farpahc trained alone and
            together with en_ewt (a transfer regime whose sources are [mr], [en, mr], [cy], [en, cy] …),
            scored on its own dev set (LAS).
  transfer  A zero-shot transfer matrix for UD: one model per training language (en, fr, mr, cy, fo),
            each parsing every dev set the shared data has (de, zh, ja have dev sets only).

    python benchmarks/regimes.py                          # every part at the full CPU budget (not short)
    python benchmarks/regimes.py --quick                  # smoke run: a few steps per stage
    python benchmarks/regimes.py --parts t5 --mlm         # GLUE with masked LM: six regimes
    python benchmarks/regimes.py --parts t5 --steps 200 --pretrain-steps 600
    python benchmarks/regimes.py --parts ud transfer --ud-steps 300 --dev-cap 0

`--steps` is the budget of every fine-tuning (single-task) stage of the GLUE part; `--pretrain-steps`
that of every multi-task stage; `--ud-steps` that of every UD stage. Full GLUE dev sets are scored
(the --quick run reads the first rows of each file only); UD dev sets are cut to `--dev-cap` sentences.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from sampling.table import format_table

common.setdefault_env()  # before torch loads

DEFAULTS = common.Defaults(unit="sentences", steps=(100, 2), dev_cap=(200, 8), batch=(16, 8),
                           batch_help="examples per batch (GLUE), sentences at most (UD)", quick_train_cap=48,
                           lrs=(1e-4, 1e-3))
PRETRAIN_STEPS = (300, 3)  # full, --quick
UD_STEPS = (200, 2)
UD_MAX_TOKENS = (1024, 512)
UD_MAX_LENGTH = 512  # the longest training sentence is 261 sub-words: every sentence in one window
UD_HEADS = ["upos", "feats", "lemma", "deps"]

GLUE = {  # task → (folder, fields, options)
    "sst2": ("SST-2", {"text": "sentence", "label": "label"}, {}),
    "mrpc": ("MRPC", {"text": "#1 String", "text_pair": "#2 String", "label": "Quality"},
             {"metrics": ["f1", "accuracy"], "positive_label": "1"}),
    "rte": ("RTE", {"text": "sentence1", "text_pair": "sentence2", "label": "label"}, {}),
    "stsb": ("STS-B", {"text": "sentence1", "text_pair": "sentence2", "label": "score"},
             {"regression": True, "metrics": ["pearson", "spearman"]}),
}
LOO_TARGETS = ["rte", "mrpc"]  # leave-one-out for the small tasks: what do the others give them?
LOW_RESOURCE = (("mr_ufal", "mr"), ("cy_ccg", "cy"), ("fo_farpahc", "fo"))
HIGH_RESOURCE = ("en_ewt", "en")
TRAINED = (("en_ewt", "en"), ("fr_sequoia", "fr"), ("mr_ufal", "mr"), ("cy_ccg", "cy"), ("fo_farpahc", "fo"))
DEV_ONLY = (("fr_gsd", "fr"), ("de_gsd", "de"), ("zh_gsd", "zh"), ("zh_gsdsimp", "zh"), ("ja_gsd", "ja"))
PARTS = ("t5", "ud", "transfer")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"GLUE: steps of every multi-task stage (default {PRETRAIN_STEPS[0]}; --quick "
                        f"{PRETRAIN_STEPS[1]})")
    p.add_argument("--ud-steps", type=int, default=None,
                   help=f"UD: steps of every stage (default {UD_STEPS[0]}; --quick {UD_STEPS[1]})")
    p.add_argument("--mlm", action="store_true",
                   help="GLUE: add masked LM on the SST-2 sentences, with mlm_pretrain and supervised_pretrain")


def _pick(args: argparse.Namespace, value: int | None, pair: tuple[int, int]) -> int:
    return value if value is not None else pair[1 if args.quick else 0]


def run_regime(experiment: dict[str, Any]) -> Any:
    from mtl import regimes
    from mtl.experiment import experiment_from_dict

    return regimes.run(experiment_from_dict(experiment), progress=False)


# --------------------------------------------------------------------------- (a) T5 on GLUE


def glue_experiment(args: argparse.Namespace, plan: common.Budget, out_dir: Path, with_mlm: bool) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for name, (folder, fields, options) in GLUE.items():
        ds: dict[str, Any] = {"language": "en", "train": f"glue/{folder}/train.tsv", "dev": f"glue/{folder}/dev.tsv",
                              "fields": fields}
        if plan.train_cap:
            ds["max_examples"] = plan.train_cap
        tasks[name] = {"family": "classification", "options": options, "datasets": [ds]}
    compare = ["single", "multi_task", "mt_finetune", "leave_one_out"]
    if with_mlm:
        text = {"language": "en", "train": "glue/SST-2/train.tsv", "fields": {"text": "sentence"}}
        if plan.train_cap:
            text["max_examples"] = plan.train_cap
        tasks["sst2_text"] = {"family": "mlm", "datasets": [text]}
        compare += ["supervised_pretrain", "mlm_pretrain"]
    exp = common.experiment_dict(
        "regimes-glue-bench", args, out_dir / "glue", plan.steps, encoder={"max_length": 128}, tasks=tasks,
        sampling={"strategy": "smoothed", "smoothing": 0.7, "batch_size": plan.batch_size},
        train={"eval_batch_size": 64, "log_every": 25, "output_dir": str(out_dir / "glue")},
    )
    exp["regime"] = {"pretrain_steps": _pick(args, args.pretrain_steps, PRETRAIN_STEPS), "finetune_steps": plan.steps,
                     "targets": LOO_TARGETS}
    exp["compare"] = compare
    return exp


def part_t5(args: argparse.Namespace, plan: common.Budget, out_dir: Path) -> str:
    out = run_regime(glue_experiment(args, plan, out_dir, with_mlm=args.mlm))
    return "(a) T5's comparison on GLUE\n" + out.text


# --------------------------------------------------------------------------- UD helpers


def _ud_datasets(plan: common.Budget, trained: tuple[tuple[str, str], ...],
                 dev_only: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """Train splits as one dataset each (`<treebank>-train`) and dev splits as another of the same language
    (`<treebank>`), so that dev sets can be cut to --dev-cap sentences without cutting the training data."""
    out: list[dict[str, Any]] = []
    for name, lang in trained:
        entry: dict[str, Any] = {"language": lang, "name": f"{name}-train", "train": f"ud/{name}/train.conllu"}
        if plan.train_cap:
            entry["max_examples"] = plan.train_cap
        out.append(entry)
    for name, lang in dev_only:
        entry = {"language": lang, "name": name, "dev": f"ud/{name}/dev.conllu"}
        if plan.dev_cap:
            entry["max_examples"] = plan.dev_cap
        out.append(entry)
    return out


def ud_experiment(args: argparse.Namespace, plan: common.Budget, out_dir: Path, name: str,
                  datasets: list[dict[str, Any]], sources: list[list[str]]) -> dict[str, Any]:
    steps = _pick(args, args.ud_steps, UD_STEPS)
    exp = common.experiment_dict(
        name, args, out_dir / name, steps,
        encoder={"max_length": UD_MAX_LENGTH, "layer_dropout": 0.1, "dropout": 0.2},
        tasks={"ud": {"family": "ud", "options": {"heads": UD_HEADS, "decoder": "mst"}, "datasets": datasets}},
        sampling={"strategy": "smoothed", "smoothing": 0.7, "batch_size": plan.batch_size,
                  "max_tokens": UD_MAX_TOKENS[1 if args.quick else 0]},
        train={"eval_batch_size": 64, "log_every": 25, "output_dir": str(out_dir / name)},
    )
    exp["regime"] = {"name": "transfer", "finetune_steps": steps, "sources": sources}
    return exp


# --------------------------------------------------------------------------- (b) low-resource UD


def part_ud(args: argparse.Namespace, plan: common.Budget, out_dir: Path) -> str:
    sources = [s for name, lang in LOW_RESOURCE for s in ([lang], [HIGH_RESOURCE[1], lang])]
    datasets = _ud_datasets(plan, (HIGH_RESOURCE, *LOW_RESOURCE), LOW_RESOURCE)
    out = run_regime(ud_experiment(args, plan, out_dir, "regimes-ud-bench", datasets, sources))
    m = out.matrix
    rows = []
    for name, lang in LOW_RESOURCE:
        col = [d for d, _ in m.targets].index(name)
        alone = m.values[m.sources.index(lang)][col]
        joint = m.values[m.sources.index(f"{HIGH_RESOURCE[1]}+{lang}")][col]
        delta = "-" if alone is None or joint is None else f"{joint - alone:+.2f}"
        rows.append((name, f"{alone:.2f}" if alone is not None else "-", f"{joint:.2f}" if joint is not None else "-",
                     delta))
    steps = m.steps // max(len(m.sources), 1)
    summary = format_table((f"treebank ({m.metric})", "alone", f"+ {HIGH_RESOURCE[0]}", "Δ"), rows, left=1)
    return (f"(b) Low-resource UD: each treebank alone and with {HIGH_RESOURCE[0]}, {steps} steps each\n"
            f"{summary}\n\n{out.text}")


# --------------------------------------------------------------------------- (c) transfer matrix


def part_transfer(args: argparse.Namespace, plan: common.Budget, out_dir: Path) -> str:
    datasets = _ud_datasets(plan, TRAINED, TRAINED + DEV_ONLY)
    sources = [[lang] for _, lang in TRAINED]
    out = run_regime(ud_experiment(args, plan, out_dir, "regimes-transfer-bench", datasets, sources))
    return "(c) Zero-shot transfer matrix, UD\n" + out.text


RUNNERS = {"t5": part_t5, "ud": part_ud, "transfer": part_transfer}


def run(args: argparse.Namespace, out_dir: Path) -> str:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    plan = common.budget(args, DEFAULTS)
    print(f"Regimes benchmark: parts {', '.join(args.parts)}; encoder {args.model}; {torch.get_num_threads()} "
          f"torch threads; GLUE fine-tuning {plan.steps} steps, multi-task "
          f"{_pick(args, args.pretrain_steps, PRETRAIN_STEPS)} steps; UD {_pick(args, args.ud_steps, UD_STEPS)} "
          f"steps per stage; UD dev sets: {f'first {plan.dev_cap} sentences' if plan.dev_cap else 'all'}", flush=True)
    reports = []
    for part in args.parts:
        t0 = time.perf_counter()
        text = RUNNERS[part](args, plan, out_dir)
        reports.append(f"{text}\n(part {part}: {time.perf_counter() - t0:.0f} s)")
    text = "\n\n".join(reports)
    print("\n" + "=" * 100 + "\n" + text, flush=True)
    return text


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__, DEFAULTS, "folder holding glue/ and ud/")
    add_args(p)
    args = p.parse_args(argv)
    common.run_in_folder(args, "regimes-bench-", run)


if __name__ == "__main__":
    main()
