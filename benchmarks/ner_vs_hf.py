"""NER parity: mtl against `AutoModelForTokenClassification` + `Trainer` (run_ner style), per dataset.

    python benchmarks/ner_vs_hf.py                                 # full budget (about 4 × 6-15 min on 2 CPU cores)
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
- three epochs (run_ner.py's default; `--epochs`), batch 32, AdamW (lr 5e-5 for encoder and head,
  `--lr`; weight decay 0.01 except biases and LayerNorm weights, gradient clipping 1.0), linear decay
  after a warm-up of ceil(10% of the steps) steps on both sides, fp32, seed 42 (`--seeds 42 43 …`
  repeats everything per seed);
- reference, as `run_ner.py` does it: `AutoModelForTokenClassification` + `Trainer` +
  `DataCollatorForTokenClassification`, words tokenised with `is_split_into_words=True`, truncated at
  128 tokens, the tag on the first sub-word of each word and -100 on the others; random batches.
  Words cut off by the truncation get no prediction: they count as `O` in the score, and the script
  reports how many there are (training and dev);
- mtl: one `ner` task (BIO, no CRF, `max_examples: 4000`, `epochs: 3`, `encoder_lr` = `head_lr` =
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
tokens/s (non-padding tokens of every epoch over the training loop's seconds; model loading,
tokenisation and evaluation are outside it), then mtl ÷ HF ratios. With several seeds each figure is
the mean ± standard deviation, and each run is listed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common

# name: (language, mtl reader format, folder under ner/)
DATASETS = {
    "conll2003": ("en", "conll2003", "conll2003"),
    "wikiann_de": ("de", "wikiann", "wikiann/de"),
    "wikiann_en": ("en", "wikiann", "wikiann/en"),
    "wikiann_fr": ("fr", "wikiann", "wikiann/fr"),
    "wikiann_nl": ("nl", "wikiann", "wikiann/nl"),
}
DEFAULT_DATASETS = "conll2003,wikiann_de"
CAPS = common.Caps(full_train=4000, quick_train=64, quick_dev=16)
# mtl runs with its defaults: for NER they are the head AutoModelForTokenClassification has (the last
# layer, dropout 0.1 before the scorer), so nothing is overridden.
MTL_BASE: list[str] = []

@dataclass(frozen=True)
class HParams(common.ParityHParams):
    """The settings both systems share: lr 5e-5, batch 32, max length 128 (common.ParityHParams's values), and
    run_ner.py's default of three epochs: after one epoch of 4,000 sentences neither system tags reliably."""

    epochs: int = 3


# --------------------------------------------------------------------------- shared by both children


def experiment_dict(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The mtl experiment: the capped training file and the capped dev file as datasets of their own
    (`max_examples` caps every split of a dataset, and train and dev take different caps)."""
    hp = HParams(**spec["hp"])
    name = spec["dataset"]
    language, fmt, folder = DATASETS[name]
    datasets = [
        {"name": f"{name}_train", "language": language, "format": fmt, "train": f"ner/{folder}/train.txt",
         "max_examples": spec["train_cap"]},
        {"name": name, "language": language, "format": fmt, "dev": f"ner/{folder}/dev.txt",
         "max_examples": spec["dev_cap"]},
    ]
    tasks = {"ner": {"family": "ner", "options": {"scheme": "BIO", "crf": False}, "datasets": datasets}}
    return common.mtl_experiment(spec, hp, tasks, overrides)


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
    out_dir = Path(spec["workdir"]) / spec["name"]
    args = common.hf_training_args(hp, out_dir, spec["seed"], per_device_eval_batch_size=hp.eval_batch_size)
    columns = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels") if k in train_enc]
    train_ds = Dataset.from_dict({k: train_enc[k] for k in columns})
    trainer, seconds = common.hf_fit(model, args, train_ds, DataCollatorForTokenClassification(tok))

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
        **common.hf_figures(trainer, seconds, len(train_enc["input_ids"]), "sentences", len(train_split.examples),
                            tokens),
        "labels": labels,
        "truncation": {"train": train_counts, "dev": dev_counts},
        "dev": dev_scores(metrics, len(dev_split.examples)),
    }


# --------------------------------------------------------------------------- mtl


def run_mtl(spec: dict[str, Any]) -> dict[str, Any]:
    from mtl.experiment import experiment_from_dict

    exp = experiment_from_dict(experiment_dict(spec, MTL_BASE + spec["overrides"]))
    trainer, outcome = common.train_mtl_like_trainer(exp, spec["threads"])
    (dev,) = outcome.results
    result = {
        **common.mtl_figures(exp, trainer, outcome, "sentences"),
        "labels": list(trainer.families["ner"].vocab.labels),
        "dev": dev_scores(dev.metrics, len(dev.split.examples)),
    }
    shutil.rmtree(outcome.output_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- planning and reporting


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="folder holding ner/ (%(default)s)")
    p.add_argument("--model", type=Path, default=common.DEFAULT_MODEL, help="encoder folder (%(default)s)")
    p.add_argument("--datasets", default=DEFAULT_DATASETS,
                   help=f"comma-separated, from: {', '.join(DATASETS)} (default: %(default)s)")
    common.add_parity_args(p, "sentences", "first N dev sentences", CAPS)
    return p.parse_args(argv)


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


def run_all(parity: common.ParityRuns, names: list[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every system on every dataset once per seed, each in a fresh process; the order alternates by seed."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {s.name: [] for s in parity.rows} for n in names}
    for k, seed in enumerate(parity.args.seeds):
        for dataset in names:
            for system in common.in_seed_order(parity.rows, k):
                r = parity.run(system, seed, f"{dataset}-{common.slug(system.name)}-s{seed}", dataset=dataset)
                runs[dataset][system.name].append(r)
                label = f"{dataset:10s} {system.name:20s}"
                print(common.run_line(seed, label, r, f"F1 {r['dev']['f1']:6.2f}"), flush=True)
    return runs


def report(dataset: str, runs: dict[str, list[dict[str, Any]]], rows: list[common.System]) -> str:
    scores = [(lambda r: r["dev"]["f1"], 2), (lambda r: r["dev"]["precision"], 2), (lambda r: r["dev"]["recall"], 2)]
    hf = runs[rows[0].name][0]
    lines = [
        f"{dataset}: first {hf['sentences']:,} training sentences ({hf['tokens']:,} tokens for HF), dev "
        f"{hf['dev']['sentences']:,} sentences; seqeval span F1 (conlleval-compatible)",
        common.parity_table(rows, runs, ["F1", "precision", "recall"], scores),
    ]
    figures = (("F1", lambda r: r["dev"]["f1"]), ("tokens/s", lambda r: r["tokens_per_second"]))
    for s in rows[1:]:
        lines.append(f"  {s.name} ÷ HF (means): " + common.ratios(runs[s.name], runs[rows[0].name], figures))
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
    parity = common.ParityRuns(Path(__file__).resolve(), args, "ner_vs_hf", CAPS, HParams(), MTL_BASE)
    hp, dev_cap = parity.hp, parity.dev_cap
    setup = (f"datasets {', '.join(names)}, each alone: first {parity.train_cap} training sentences, "
             f"{hp.epochs} epoch(s), "
             f"batch {hp.batch_size}, max length {hp.max_length}")
    with parity.session(setup, f"first {dev_cap} sentences" if dev_cap else "all sentences"):
        runs = run_all(parity, names)
        for dataset in names:
            print("\n" + report(dataset, runs[dataset], parity.rows))
        parity.write_json({"datasets": names}, runs)


if __name__ == "__main__":
    common.child_or_main(main, {"hf": run_hf, "mtl": run_mtl})
