"""NER parity: mtl against `AutoModelForTokenClassification` + `Trainer` (run_ner style), per dataset.

    python benchmarks/ner_vs_hf.py                                 # full budget (about 4 × 2-5 min on 2 CPU cores)
    python benchmarks/ner_vs_hf.py --quick                         # smoke run (about 2 min)
    python benchmarks/ner_vs_hf.py --seeds 42 43 --variant mix-scalar:encoder.mix=scalar --workdir runs/ner-vs-hf

One configuration per dataset, each trained on that dataset alone: (a) CoNLL-2003 English
(`ner/conll2003`, IOB1 tags read as BIO) and (b) WikiANN German (`ner/wikiann/de`; `--datasets` also
knows wikiann_en, wikiann_fr and wikiann_nl). Both systems fine-tune the same encoder
(`../shared/models/multilingual-e5-small-q4`, BERT 12 × 384) with the same budget, each run in a
fresh process:

- data: the first 4,000 training sentences (`--train-cap`), read by mtl's ner reader for both systems
  (so both see the same words and the same BIO tags); dev: the whole dev file (CoNLL-2003 3,250
  sentences, WikiANN 10,000; `--dev-cap N` keeps the first N);
- one epoch, batch 32, AdamW (lr 5e-5 for encoder and head, weight decay 0.01 except biases and
  LayerNorm weights, gradient clipping 1.0), linear decay after a warm-up of ceil(10% of the steps)
  steps on both sides, fp32, seed 42 (`--seeds 42 43 …` repeats everything per seed);
- reference, as `run_ner.py` does it: `AutoModelForTokenClassification` + `Trainer` +
  `DataCollatorForTokenClassification`, words tokenised with `is_split_into_words=True`, truncated at
  128 tokens, the tag on the first sub-word of each word and -100 on the others; random batches.
  Words cut off by the truncation get no prediction: they count as `O` in the score, and the script
  reports how many there are (training and dev);
- mtl: one `ner` task (BIO, no CRF, `max_examples: 4000`, `epochs: 1`, `encoder_lr` = `head_lr` =
  5e-5, `warmup` as above, `weight_decay: 0.01`, `sampling.batch_size: 32`, encoder `max_length: 128`),
  trained by `mtl.trainer` with its own sampler (length-grouped batches). mtl never truncates: a
  sentence longer than 128 tokens becomes several windows cut at word boundaries. The mtl run uses
  mtl's defaults, which for NER are the head the reference has: the last encoder layer
  (`encoder.mix: auto` → `last`) and dropout 0.1 before the tag scorer (as
  `BertForTokenClassification`). `--variant mix-scalar:encoder.mix=scalar` adds a learned scalar mix
  of all layers as a further row; `--mtl-set KEY=VALUE` changes every mtl row. What
  still differs by design: mtl's tag scorer starts from torch's default initialisation rather than
  BERT's N(0, 0.02).

Scoring is one code path for both: each system's word-level tags (the prediction at each word's
first sub-word) go through the ner family's `score`, i.e. `tasks.ner.span_scores`: seqeval span
precision/recall/F1 (conlleval-compatible) against the same gold BIO tags of every dev word.

Printed per dataset and system: F1 (and precision, recall), training windows, steps, seconds and
tokens/s (non-padding tokens of one epoch over the training loop's seconds; model loading,
tokenisation and evaluation are outside it), then mtl ÷ HF ratios. With several seeds each figure is
the mean ± standard deviation, and each run is listed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (
    CHILD_FLAG,
    DEFAULT_DATA,
    DEFAULT_MODEL,
    mean_spread,
    offline_env,
    optimizer_label,
    parse_variant,
    peak_rss_mib,
    run_fresh,
)
from sampling.table import format_table

# name: (language, mtl reader format, folder under ner/)
DATASETS = {
    "conll2003": ("en", "conll2003", "conll2003"),
    "wikiann_de": ("de", "wikiann", "wikiann/de"),
    "wikiann_en": ("en", "wikiann", "wikiann/en"),
    "wikiann_fr": ("fr", "wikiann", "wikiann/fr"),
    "wikiann_nl": ("nl", "wikiann", "wikiann/nl"),
}
DEFAULT_DATASETS = "conll2003,wikiann_de"
FULL_TRAIN_CAP = 4000
QUICK_TRAIN_CAP = 64
QUICK_DEV_CAP = 16
# mtl runs with its defaults: for NER they are the head AutoModelForTokenClassification has (the last
# layer, dropout 0.1 before the scorer), so nothing is overridden.
MTL_BASE: list[str] = []


@dataclass(frozen=True)
class HParams:
    """The settings both systems share."""

    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1  # share of the steps; both sides warm up for ceil(warmup × steps) steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    eval_batch_size: int = 64


# --------------------------------------------------------------------------- shared by both children


def experiment_dict(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The mtl experiment: the capped training file and the capped dev file as datasets of their own
    (`max_examples` caps every split of a dataset, and train and dev take different caps)."""
    from mtl.config import set_override

    hp = HParams(**spec["hp"])
    work = Path(spec["workdir"])
    name = spec["dataset"]
    language, fmt, folder = DATASETS[name]
    datasets = [
        {"name": f"{name}_train", "language": language, "format": fmt, "train": f"ner/{folder}/train.txt",
         "max_examples": spec["train_cap"]},
        {"name": name, "language": language, "format": fmt, "dev": f"ner/{folder}/dev.txt",
         "max_examples": spec["dev_cap"]},
    ]
    raw: dict[str, Any] = {
        "name": spec["name"],
        "data_root": spec["data"],
        "encoder": {"name": spec["model"], "max_length": hp.max_length},
        "tasks": {"ner": {"family": "ner", "options": {"scheme": "BIO", "crf": False}, "datasets": datasets}},
        "sampling": {"batch_size": hp.batch_size},
        "train": {
            "seed": spec["seed"],
            "epochs": 1,
            "encoder_lr": hp.lr,
            "head_lr": hp.lr,
            "weight_decay": hp.weight_decay,
            "warmup": hp.warmup,
            "schedule": "linear",
            "max_grad_norm": hp.max_grad_norm,
            "precision": "fp32",
            "eval_batch_size": hp.eval_batch_size,
            "output_dir": str(work / spec["name"]),
            "cache_dir": str(work / "feature-cache"),
            "log_every": 100,
            "keep_checkpoints": 1,
        },
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }
    for assignment in overrides:
        set_override(raw, assignment)
    return raw


def dev_scores(metrics: dict[str, float], sentences: int) -> dict[str, Any]:
    return {"f1": metrics["f1"], "precision": metrics["precision"], "recall": metrics["recall"],
            "strict_f1": metrics["strict_f1"], "sentences": sentences}


# --------------------------------------------------------------------------- reference: HF Trainer


def align_labels(tok: Any, sentences: list[list[str]], tags: list[list[str]] | None, label_ids: dict[str, int],
                 max_length: int) -> tuple[Any, dict[str, int]]:
    """run_ner.py's `tokenize_and_align_labels`: truncation at max_length, the tag on each word's first
    sub-word, -100 elsewhere. Also counts the words left without a first sub-word."""
    enc = tok(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    counts = {"words": 0, "truncated": 0, "empty": 0, "sentences_cut": 0}
    labels = []
    for i, words in enumerate(sentences):
        word_ids = enc.word_ids(i)
        seen = {w for w in word_ids if w is not None}
        last = max(seen) if seen else -1
        counts["words"] += len(words)
        counts["truncated"] += len(words) - 1 - last
        counts["empty"] += sum(1 for w in range(last + 1) if w not in seen)
        counts["sentences_cut"] += last < len(words) - 1
        if tags is not None:
            row, previous = [], None
            for w in word_ids:
                row.append(-100 if w is None or w == previous else label_ids[tags[i][w]])
                previous = w
            labels.append(row)
    if tags is not None:
        enc["labels"] = labels
    return enc, counts


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from mtl.data import build_families, load_splits
    from mtl.encoder import load_tokenizer
    from mtl.experiment import experiment_from_dict

    hp = HParams(**spec["hp"])
    # The words and BIO tags as mtl reads them (IOB1 → BIO, -DOCSTART- lines dropped, WikiANN prefixes
    # stripped), and its label list.
    exp = experiment_from_dict(experiment_dict(spec, MTL_BASE))
    families = build_families(exp, load_tokenizer(exp.encoder))
    family = families["ner"]
    splits = load_splits(exp, families, ["train", "dev"], cache_dir=Path(exp.train.cache_dir))
    train_split = next(s for s in splits if s.role == "train")
    dev_split = next(s for s in splits if s.role == "dev")
    labels = list(family.vocab.labels)
    label_ids = {lab: i for i, lab in enumerate(labels)}

    tok = AutoTokenizer.from_pretrained(spec["model"])
    train_enc, train_counts = align_labels(
        tok, [ex.tokens for ex in train_split.examples], [ex.tags for ex in train_split.examples], label_ids,
        hp.max_length)
    dev_words = [ex.tokens for ex in dev_split.examples]
    dev_enc, dev_counts = align_labels(tok, dev_words, None, label_ids, hp.max_length)
    tokens = sum(len(ids) for ids in train_enc["input_ids"])

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    set_seed(spec["seed"])
    model = AutoModelForTokenClassification.from_pretrained(
        spec["model"], num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids
    )
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            clock["end"] = time.perf_counter()

    out_dir = Path(spec["workdir"]) / spec["name"]
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.eval_batch_size,
        learning_rate=hp.lr,
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup,  # transformers 5: a float < 1 is a share of the steps (rounded up)
        lr_scheduler_type="linear",
        max_grad_norm=hp.max_grad_norm,
        num_train_epochs=1,
        seed=spec["seed"],
        data_seed=spec["seed"],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    columns = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in train_enc]
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({k: train_enc[k] for k in columns}),
        data_collator=DataCollatorForTokenClassification(tok),
        callbacks=[Clock()],
    )
    trainer.train()
    steps = trainer.state.global_step
    seconds = clock["end"] - clock["start"]

    dev_columns = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in dev_enc]
    logits = trainer.predict(Dataset.from_dict({k: dev_enc[k] for k in dev_columns})).predictions
    best = np.argmax(logits, axis=-1)
    predictions = []
    for i, words in enumerate(dev_words):
        tags = ["O"] * len(words)  # words without a first sub-word (cut off by the truncation) stay O
        previous = None
        for pos, w in enumerate(dev_enc.word_ids(i)):
            if w is not None and w != previous:
                tags[w] = labels[int(best[i, pos])]
            previous = w
        predictions.append(tags)
    metrics = family.score(dev_split.examples, predictions, dev_split.dataset)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "windows": len(train_enc["input_ids"]),
        "sentences": len(train_split.examples),
        "steps": steps,
        "warmup_steps": args.get_warmup_steps(steps),
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "optimizer": optimizer_label(trainer.optimizer),
        "labels": labels,
        "truncation": {"train": train_counts, "dev": dev_counts},
        "dev": dev_scores(metrics, len(dev_split.examples)),
    }


# --------------------------------------------------------------------------- mtl


def run_mtl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from mtl.data import build_families, load_splits, resolve_steps
    from mtl.encoder import load_tokenizer
    from mtl.experiment import experiment_from_dict
    from mtl.trainer import Trainer, warmup_steps

    exp = experiment_from_dict(experiment_dict(spec, MTL_BASE + spec["overrides"]))
    # Warm up for ceil(share × steps) steps, as the Trainer does (mtl itself rounds a share down).
    families = build_families(exp, load_tokenizer(exp.encoder))
    train_splits = load_splits(exp, families, ["train"], cache_dir=Path(exp.train.cache_dir))
    total = resolve_steps(exp, train_splits)
    if 0 < exp.train.warmup < 1:
        exp.train.warmup = float(max(1, math.ceil(exp.train.warmup * total)))
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    trainer = Trainer(exp, progress=False)
    outcome = trainer.fit()
    (split,) = trainer.train_splits
    (dev,) = outcome.results
    stats = outcome.train_stats
    result = {
        "windows": len(split.features),
        "sentences": len(split.examples),
        "steps": outcome.steps,
        "warmup_steps": warmup_steps(exp, trainer.total_steps),
        "tokens": sum(split.lengths),
        "train_seconds": stats["train/seconds"],
        "tokens_per_second": stats["train/tokens_per_second"],
        "optimizer": optimizer_label(trainer.optimizer),
        "labels": list(trainer.families["ner"].vocab.labels),
        "dev": dev_scores(dev.metrics, len(dev.split.examples)),
    }
    shutil.rmtree(outcome.output_dir, ignore_errors=True)
    return result


def run_child(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result = (run_hf if spec["kind"] == "hf" else run_mtl)(spec)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(spec["result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")


# --------------------------------------------------------------------------- planning and reporting


@dataclass
class System:
    name: str
    kind: str  # hf | mtl
    overrides: list[str]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding ner/ (%(default)s)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="encoder folder (%(default)s)")
    p.add_argument("--datasets", default=DEFAULT_DATASETS,
                   help=f"comma-separated, from: {', '.join(DATASETS)} (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run of every system per seed")
    p.add_argument("--train-cap", type=int, default=None,
                   help=f"first N training sentences (default {FULL_TRAIN_CAP}; --quick {QUICK_TRAIN_CAP})")
    p.add_argument("--dev-cap", type=int, default=None,
                   help=f"first N dev sentences (default: all; --quick {QUICK_DEV_CAP})")
    p.add_argument("--mtl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an mtl experiment override for every mtl row, e.g. encoder.mix=scalar (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="one more mtl row with these overrides, e.g. mix-scalar:encoder.mix=scalar (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: torch's choice)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where runs write, kept afterwards; a rerun with the same folder and settings reads "
                        "finished runs back (default: a temporary folder, removed at the end)")
    p.add_argument("--json", type=Path, default=None, help="also write every run's raw figures here")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: first {QUICK_TRAIN_CAP} training and {QUICK_DEV_CAP} dev sentences")
    return p.parse_args(argv)


def systems(args: argparse.Namespace) -> list[System]:
    out = [System("HF Trainer", "hf", []), System("mtl", "mtl", list(args.mtl_set))]
    for text in args.variant:
        try:
            name, overrides = parse_variant(text)
        except ValueError as err:
            sys.exit(f"ner_vs_hf: {err}")
        out.append(System(f"mtl {name}", "mtl", list(args.mtl_set) + overrides))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        sys.exit(f"ner_vs_hf: two rows share a name: {names}")
    return out


def chosen_datasets(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        sys.exit(f"ner_vs_hf: --datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
    missing = [
        str(args.data / "ner" / DATASETS[n][2] / f"{split}.txt")
        for n in names
        for split in ("train", "dev")
        if not (args.data / "ner" / DATASETS[n][2] / f"{split}.txt").is_file()
    ]
    if missing:
        sys.exit(f"ner_vs_hf: data not found: {', '.join(missing)} (pass --data DIR)")
    if not (args.model / "config.json").is_file():
        sys.exit(f"ner_vs_hf: no encoder in {args.model} (pass --model DIR)")
    return names


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_all(args: argparse.Namespace, names: list[str], rows: list[System], workdir: Path, train_cap: int | None,
            dev_cap: int | None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every system on every dataset once per seed, each in a fresh process; the order alternates by seed."""
    env = offline_env(workdir / "hf_home")
    hp = HParams()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {s.name: [] for s in rows} for n in names}
    for k, seed in enumerate(args.seeds):
        for dataset in names:
            for system in rows if k % 2 == 0 else list(reversed(rows)):
                name = f"{dataset}-{slug(system.name)}-s{seed}"
                spec = {
                    "kind": system.kind,
                    "name": name,
                    "dataset": dataset,
                    "seed": seed,
                    "data": str(args.data),
                    "model": str(args.model),
                    "train_cap": train_cap,
                    "dev_cap": dev_cap,
                    "hp": asdict(hp),
                    "overrides": system.overrides,
                    "threads": args.threads,
                    "workdir": str(workdir),
                }
                r = run_fresh(Path(__file__).resolve(), spec, workdir, name, env, reuse=args.workdir is not None)
                r["seed"] = seed
                runs[dataset][system.name].append(r)
                print(
                    f"  seed {seed}  {dataset:10s} {system.name:20s} {r['windows']:5d} windows {r['steps']:4d} steps "
                    f"{r['train_seconds']:7.1f} s train {r['tokens_per_second']:6.0f} tokens/s  "
                    f"F1 {r['dev']['f1']:6.2f}" + ("  (read back)" if r.get("reused") else ""),
                    flush=True,
                )
    return runs


def report(dataset: str, runs: dict[str, list[dict[str, Any]]], rows: list[System]) -> str:
    def col(name: str, get: Any, digits: int = 2) -> str:
        return mean_spread([get(r) for r in runs[name]], digits)

    def mean(name: str, get: Any) -> float:
        values = [get(r) for r in runs[name]]
        return sum(values) / len(values)

    table = []
    for s in rows:
        rs = runs[s.name]
        table.append(
            [
                s.name,
                "/".join(sorted({f"{r['windows']:,}" for r in rs})),
                "/".join(sorted({str(r["steps"]) for r in rs})),
                col(s.name, lambda r: r["dev"]["f1"]),
                col(s.name, lambda r: r["dev"]["precision"]),
                col(s.name, lambda r: r["dev"]["recall"]),
                col(s.name, lambda r: r["train_seconds"], 0),
                col(s.name, lambda r: r["tokens_per_second"], 0),
                col(s.name, lambda r: r["peak_rss_mib"], 0),
            ]
        )
    headers = ["system", "windows", "steps", "F1", "precision", "recall", "train s", "tokens/s", "peak MiB"]
    hf = runs[rows[0].name][0]
    lines = [
        f"{dataset}: first {hf['sentences']:,} training sentences ({hf['tokens']:,} tokens for HF), dev "
        f"{hf['dev']['sentences']:,} sentences; seqeval span F1 (conlleval-compatible)",
        format_table(headers, table),
    ]
    for s in rows[1:]:
        parts = []
        for label, get in (("F1", lambda r: r["dev"]["f1"]), ("tokens/s", lambda r: r["tokens_per_second"])):
            a, b = mean(s.name, get), mean(rows[0].name, get)
            parts.append(f"{label} {a / b:.3f}×" if b > 0 else f"{label} -")
        lines.append(f"  {s.name} ÷ HF (means): " + ", ".join(parts))
    cut = hf["truncation"]
    lines.append(
        "  HF truncation at 128 tokens: training "
        f"{cut['train']['truncated']:,} of {cut['train']['words']:,} words cut off in "
        f"{cut['train']['sentences_cut']:,} sentences; dev {cut['dev']['truncated']:,} of {cut['dev']['words']:,} "
        f"words ({cut['dev']['sentences_cut']:,} sentences), scored as O; words without any sub-word: "
        f"{cut['train']['empty']} training, {cut['dev']['empty']} dev"
    )
    mtl = runs[rows[1].name][0]
    same = "same" if hf["labels"] == mtl["labels"] else "DIFFERENT"
    lines.append(
        f"  labels: HF {len(hf['labels'])}, mtl {len(mtl['labels'])} ({same}"
        f"); warm-up steps: HF {hf['warmup_steps']}, mtl {mtl['warmup_steps']}; optimizer: HF {hf['optimizer']}, "
        f"mtl {mtl['optimizer']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.data, args.model = args.data.expanduser().resolve(), args.model.expanduser().resolve()
    names = chosen_datasets(args)
    rows = systems(args)
    train_cap = args.train_cap or (QUICK_TRAIN_CAP if args.quick else FULL_TRAIN_CAP)
    dev_cap = args.dev_cap if args.dev_cap is not None else (QUICK_DEV_CAP if args.quick else None)
    dev_cap = dev_cap or None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ner_vs_hf-"))).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    hp = HParams()
    started = time.perf_counter()
    print(
        f"ner_vs_hf: encoder {args.model.name}; datasets {', '.join(names)}, each alone: first {train_cap} "
        f"training sentences, 1 epoch, batch {hp.batch_size}, max length {hp.max_length}, lr {hp.lr:g}, warm-up "
        f"{hp.warmup:.0%} (rounded up), weight decay {hp.weight_decay}, fp32; dev: "
        f"{f'first {dev_cap} sentences' if dev_cap else 'all sentences'}; seeds {args.seeds}; "
        f"one fresh process per run; logs in {workdir}",
        flush=True,
    )
    for s in rows[1:]:
        print(f"  {s.name}: overrides {', '.join(MTL_BASE + s.overrides) or 'none (mtl defaults)'}", flush=True)
    try:
        runs = run_all(args, names, rows, workdir, train_cap, dev_cap)
        for dataset in names:
            print("\n" + report(dataset, runs[dataset], rows))
        if args.json:
            settings = {"hp": asdict(hp), "datasets": names, "train_cap": train_cap, "dev_cap": dev_cap,
                        "seeds": args.seeds, "systems": [asdict(s) for s in rows], "mtl_base": MTL_BASE}
            args.json.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1), encoding="utf-8")
        print(f"\nwall time {time.perf_counter() - started:.0f} s", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        run_child(Path(sys.argv[2]))
    else:
        main()
