"""Regimes benchmark: which training strategy, at a stated compute, on real data with a pretrained encoder.

Four parts, each an `mtl` regime run with the multilingual encoder in ../shared/models:

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
  lowres    Does multilingual training help a small treebank? Each of --treebanks trained alone and with
            en_ewt and fr_sequoia under each of --strategies (smoothed, UniMax, adaptive), --seeds seeds,
            equal steps, LAS on the small treebank's dev set as mean ± sd, with the paired-bootstrap mark of
            every difference to "alone" (mtl/significance.py). --curve first prints the alone model's dev
            curve, to choose --ud-steps where it has converged.

    python benchmarks/regimes.py                          # every part at the full CPU budget (not short)
    python benchmarks/regimes.py --quick                  # smoke run: a few steps per stage
    python benchmarks/regimes.py --parts t5 --mlm         # GLUE with masked LM: six regimes
    python benchmarks/regimes.py --parts t5 --steps 200 --pretrain-steps 600
    python benchmarks/regimes.py --parts ud transfer --ud-steps 300 --dev-cap 0
    python benchmarks/regimes.py --parts lowres --treebanks mr_ufal --curve --ud-steps 300
    python benchmarks/regimes.py --parts lowres --treebanks mr_ufal --ud-steps 400 --dev-cap 0 --seeds 1 2 3

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
from mtl.core.table import format_table

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
PARTS = ("t5", "ud", "transfer", "lowres")
STRATEGIES = ("smoothed", "unimax", "adaptive")
COMPANIONS = (("en_ewt", "en"), ("fr_sequoia", "fr"))  # the high-resource treebanks of part lowres


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help=f"GLUE: steps of every multi-task stage (default {PRETRAIN_STEPS[0]}; --quick "
                        f"{PRETRAIN_STEPS[1]})")
    p.add_argument("--ud-steps", type=int, default=None,
                   help=f"UD: steps of every stage (default {UD_STEPS[0]}; --quick {UD_STEPS[1]})")
    p.add_argument("--treebanks", nargs="+", choices=[name for name, _ in LOW_RESOURCE],
                   default=[name for name, _ in LOW_RESOURCE], help="lowres: the small treebanks")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES),
                   help="lowres: the mixing strategies of the joint models")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="lowres: one model per seed")
    p.add_argument("--curve", action="store_true",
                   help="lowres: train each small treebank alone once, scoring dev every tenth of --ud-steps")
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


# --------------------------------------------------------------------------- (d) low-resource UD over seeds


def _curve(args: argparse.Namespace, plan: common.Budget, out_dir: Path, name: str, lang: str, steps: int) -> str:
    """The small treebank alone, its dev LAS every tenth of the budget (read back from a local MLflow store):
    the budget of the comparison is chosen where this curve has flattened."""
    import mlflow

    exp = ud_experiment(args, plan, out_dir, f"lowres-curve-{name}", _ud_datasets(plan, ((name, lang),),
                                                                                    ((name, lang),)), [[lang]])
    del exp["regime"]
    uri = f"sqlite:///{out_dir / 'curve-mlflow.db'}"
    exp["tracking"] = {"enabled": True, "uri": uri, "log_model": False, "log_predictions": False,
                       "log_plots": False}
    exp["train"]["eval_every"] = max(steps // 10, 1)
    _, outcome = common.train(exp)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    key = next(k for k in client.get_run(outcome.run_id).data.metrics if k.endswith(f"{name}/LAS"))
    points = sorted((m.step, m.value) for m in client.get_metric_history(outcome.run_id, key))
    rows = [(str(step), f"{value:.2f}") for step, value in points]
    return f"Dev curve of {name} alone (seed {args.seed}, {key}):\n" + format_table(("step", "LAS"), rows, left=0)


def _per_seed(out: Any, name: str, source: str) -> dict[int, tuple[float, list[float], int]]:
    """seed → (LAS on the small treebank's dev set, its bootstrap replicates, batches the treebank drew) of the
    stage trained on `source` (languages joined by '+')."""
    found = {}
    for key, result in out.stages.items():
        seed_part, *_, stage = key.split("/")
        if stage != source:
            continue
        metric = next(k for k in result.metrics if k.endswith(f"/{name}/LAS"))
        reps = next((v for k, v in result.replicates.items() if k.endswith(f"/{name}/LAS")), [])
        drawn = sum(n for k, n in result.drawn.items() if k.endswith(f"/{name}-train"))
        found[int(seed_part.removeprefix("seed-"))] = (result.metrics[metric], reps, drawn)
    return found


def part_lowres(args: argparse.Namespace, plan: common.Budget, out_dir: Path) -> str:
    from mtl.significance import mark, mean_sd

    steps = _pick(args, args.ud_steps, UD_STEPS)
    blocks = []
    for name, lang in LOW_RESOURCE:
        if name not in args.treebanks:
            continue
        if args.curve:
            blocks.append(_curve(args, plan, out_dir, name, lang, steps))
            continue
        datasets = _ud_datasets(plan, (*COMPANIONS, (name, lang)), ((name, lang),))
        joint = "+".join([lg for _, lg in COMPANIONS] + [lang])
        rows: dict[str, dict[int, tuple[float, list[float], int]]] = {}
        for i, strategy in enumerate(args.strategies):
            sources = ([[lang]] if i == 0 else []) + [joint.split("+")]  # alone once: one group, no mixing
            exp = ud_experiment(args, plan, out_dir, f"lowres-{name}-{strategy}", datasets, sources)
            exp["sampling"]["strategy"] = strategy
            if strategy == "unimax":
                del exp["sampling"]["smoothing"]
            exp["seeds"] = list(args.seeds)
            del exp["train"]["seed"]
            out = run_regime(exp)
            if i == 0:
                rows["alone"] = _per_seed(out, name, lang)
            rows[f"+ en, fr ({strategy})"] = _per_seed(out, name, joint)
        base = rows["alone"]
        table_rows = []
        for label, seeds in rows.items():
            mean, sd = mean_sd([v for v, _, _ in seeds.values()])
            marked = "" if label == "alone" else mark([(v, base[s][0], reps, base[s][1])
                                                         for s, (v, reps, _) in seeds.items()])
            delta = "" if label == "alone" else f"{mean - mean_sd([v for v, _, _ in base.values()])[0]:+.2f}"
            per_seed = " ".join(f"{seeds[s][0]:.2f}" for s in sorted(seeds))
            drawn = round(sum(d for _, _, d in seeds.values()) / len(seeds))
            table_rows.append((label, f"{mean:.2f} ± {sd:.2f}{marked}", delta, per_seed, str(drawn)))
        scored = f"first {plan.dev_cap}" if plan.dev_cap else "all"
        head = (f"(d) {name}: alone and with {', '.join(n for n, _ in COMPANIONS)}, {steps} steps each, seeds "
                f"{', '.join(map(str, args.seeds))}; LAS on its dev set ({scored} sentences)")
        blocks.append(head + "\n" + format_table(("model", "LAS mean ± sd", "Δ", "per seed", f"{name} batches"),
                                                  table_rows, left=1)
                      + "\n▲/▼: beyond the paired bootstrap's noise (p < 0.05) in every seed pair, against alone")
    return "\n\n".join(blocks)


RUNNERS = {"t5": part_t5, "ud": part_ud, "transfer": part_transfer, "lowres": part_lowres}


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
