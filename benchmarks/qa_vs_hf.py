"""Extractive QA parity: mtl against `AutoModelForQuestionAnswering` + `Trainer`, SQuAD → DRCD zero-shot.

    python benchmarks/qa_vs_hf.py                                  # full budget (about 2 × 10-15 min on 2 CPU cores)
    python benchmarks/qa_vs_hf.py --quick                          # smoke run (about 1-2 min)
    python benchmarks/qa_vs_hf.py --seeds 42 43 --variant mix-scalar:encoder.mix=scalar --workdir runs/qa-vs-hf

Both systems fine-tune the same encoder (`../shared/models/multilingual-e5-small-q4`, BERT 12 × 384) on
the same data with the same hyper-parameters and budget, each run in a fresh process:

- data: the first 4,000 questions of `squad/train.json` (`--train-cap`), question + context windows of
  256 tokens of which 96 are shared by consecutive windows of one context; a window whose context does
  not hold the whole (first) answer is labelled at [CLS]. At these settings that is 4,538 windows, and
  the script checks that both systems cut exactly the same windows (all 4,538 are token for token the
  same; 58 carry other answer labels: where a bare "▁" piece and the next piece start at the same
  character run_qa picks the second, mtl the first, and for an answer that ends a window's context
  run_qa's start search runs on to the closing separator);
- one epoch, batch 16, AdamW (lr 1e-4 for encoder and head, weight decay 0.01 except biases and
  LayerNorm weights, gradient clipping 1.0), linear decay after a warm-up of ceil(10% of the steps)
  steps on both sides, fp32, seed 42 (`--seeds 42 43 …` repeats everything per seed);
- reference, as `run_qa.py` does it: `AutoModelForQuestionAnswering` + `Trainer`, features from
  `prepare_train_features` (`truncation="only_second"`, `max_length=256`, `stride=96`,
  `return_overflowing_tokens`, `return_offsets_mapping`), random batches padded per batch by
  `DataCollatorWithPadding` (run_qa's `--pad_to_max_length False`: the faster Trainer setting);
- mtl: one `qa` task (`max_examples: 4000`, `epochs: 1`, `encoder_lr` = `head_lr` = 1e-4,
  `warmup` as above, `weight_decay: 0.01`, `sampling.batch_size: 16`, options `max_length: 256`,
  `doc_stride: 96`), trained by `mtl.trainer` with its own sampler (length-grouped batches). mtl's
  `doc_stride` is the number of tokens consecutive windows share, passed to the tokenizer as its
  `stride`: the same number as run_qa's `--doc_stride`/`stride`. The mtl run uses mtl's defaults,
  which for QA are the head the reference has: the last encoder layer (`encoder.mix: auto` → `last`)
  and no dropout before the span scorer (`BertForQuestionAnswering` has none).
  `--variant mix-scalar:encoder.mix=scalar` adds a row with a learned scalar mix of all layers
  (`train.mix_lr` 1e-2); `--variant mix-uniform:encoder.mix=scalar,train.mix_lr=1e-4,encoder.dropout=0.1`
  reproduces the earlier default (a mix learning at the heads' rate, which stays uniform);
  `--mtl-set KEY=VALUE` changes every mtl row. What still differs by design: mtl
  masks the logits of question tokens in training, and its span scorer starts from torch's default
  initialisation rather than BERT's N(0, 0.02).

Scoring is one code path for both: the dev questions are cut into mtl's eval windows (same settings)
and each model's start/end logits on those windows go through the qa family's `decode` (20 best
starts and ends per window, answers of at most 30 tokens), `finalize` (best span over a question's
windows) and `score` (`tasks/_squad_metrics.py`: SQuAD v1.1 EM/F1; character-level for Chinese);
`mtl.evaluate.evaluate` drives it, with the Hugging Face model wrapped to return its logits. Dev sets:
`squad/dev.json` (in-language, all 1,034 questions) and `drcd/dev.json` (Traditional Chinese,
zero-shot: no Chinese training data; the 200-question sample); `--dev-cap N` keeps the first N of each.

Printed per system: SQuAD EM/F1, DRCD EM/F1, the zero-shot / in-language F1 ratio, training windows,
steps, seconds and tokens/s (non-padding tokens of one epoch over the training loop's seconds; model
loading, tokenisation and evaluation are outside it), then mtl ÷ HF ratios. With several seeds each
figure is the mean ± standard deviation, and each run is listed.
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

TRAIN_FILE = "squad/train.json"
DEV_SETS = (("squad", "en", "squad/dev.json"), ("drcd", "zh-TW", "drcd/dev.json"))  # in-language, zero-shot
FULL_TRAIN_CAP = 4000
QUICK_TRAIN_CAP = 48
QUICK_DEV_CAP = 8
# mtl runs with its defaults: for QA they are the head AutoModelForQuestionAnswering has (the last
# layer, no dropout before the scorer), so nothing is overridden.
MTL_BASE: list[str] = []


@dataclass(frozen=True)
class HParams:
    """The settings both systems share."""

    lr: float = 1e-4
    batch_size: int = 16
    warmup: float = 0.1  # share of the steps; both sides warm up for ceil(warmup × steps) steps
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 256
    stride: int = 96  # tokens shared by consecutive windows (HF `stride` = mtl `doc_stride`)
    n_best: int = 20
    max_answer_length: int = 30
    eval_batch_size: int = 64


# --------------------------------------------------------------------------- shared by both children


def experiment_dict(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The mtl experiment: the capped training file, and the capped dev sets as datasets of their own
    (`max_examples` caps every split of a dataset, and train and dev take different caps)."""
    from mtl.config import set_override

    hp = HParams(**spec["hp"])
    work = Path(spec["workdir"])
    datasets: list[dict[str, Any]] = [
        {"name": "squad_train", "language": "en", "train": TRAIN_FILE, "max_examples": spec["train_cap"]}
    ]
    for name, language, path in DEV_SETS:
        datasets.append({"name": name, "language": language, "dev": path, "max_examples": spec["dev_cap"]})
    raw: dict[str, Any] = {
        "name": spec["name"],
        "data_root": spec["data"],
        "encoder": {"name": spec["model"], "max_length": hp.max_length},
        "tasks": {
            "qa": {
                "family": "qa",
                "options": {
                    "max_length": hp.max_length,
                    "doc_stride": hp.stride,
                    "n_best": hp.n_best,
                    "max_answer_length": hp.max_answer_length,
                },
                "datasets": datasets,
            }
        },
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


def dev_scores(results: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        out[r.split.dataset.name] = {
            "exact_match": r.metrics["exact_match"],
            "f1": r.metrics["f1"],
            "questions": len(r.split.examples),
            "windows": len(r.split.features),
            "zero_shot": r.split.zero_shot,
        }
    return out


# --------------------------------------------------------------------------- reference: HF Trainer


def read_squad(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` questions in file order, flattened as the `squad` dataset script does."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        {"id": qa["id"], "question": qa["question"], "context": para["context"], "answers": qa["answers"]}
        for article in data["data"]
        for para in article["paragraphs"]
        for qa in para["qas"]
    ]
    return rows[:limit] if limit is not None else rows


def prepare_train_features(rows: list[dict[str, Any]], tok: Any, hp: HParams) -> dict[str, list]:
    """run_qa.py's `prepare_train_features` (padding left to the collator): windows labelled with the
    first answer's tokens, or with [CLS] when the window does not hold the whole answer."""
    enc = tok(
        [r["question"].lstrip() for r in rows],
        [r["context"] for r in rows],
        truncation="only_second",
        max_length=hp.max_length,
        stride=hp.stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    sample_map = enc.pop("overflow_to_sample_mapping")
    all_offsets = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(all_offsets):
        ids = enc["input_ids"][i]
        cls = ids.index(tok.cls_token_id)
        seq = enc.sequence_ids(i)
        answers = rows[sample_map[i]]["answers"]
        if not answers:
            starts.append(cls)
            ends.append(cls)
            continue
        start_char = answers[0]["answer_start"]
        end_char = start_char + len(answers[0]["text"])
        first = 0
        while seq[first] != 1:
            first += 1
        last = len(ids) - 1
        while seq[last] != 1:
            last -= 1
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls)
            ends.append(cls)
            continue
        while first < len(offsets) and offsets[first][0] <= start_char:
            first += 1
        starts.append(first - 1)
        while offsets[last][1] >= end_char:
            last -= 1
        ends.append(last + 1)
    out = {k: list(v) for k, v in enc.items()}
    out["start_positions"], out["end_positions"] = starts, ends
    return out


def compare_windows(hf: dict[str, list], mtl_features: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the reference's training windows mtl cuts identically (tokens, then answer labels)."""
    check = {"hf_windows": len(hf["input_ids"]), "mtl_windows": len(mtl_features), "same_tokens": 0, "same_labels": 0}
    if check["hf_windows"] != check["mtl_windows"]:
        return check
    for i, feat in enumerate(mtl_features):
        if feat["input_ids"] == hf["input_ids"][i]:
            check["same_tokens"] += 1
            same = (feat.get("start_positions"), feat.get("end_positions")) == (
                hf["start_positions"][i],
                hf["end_positions"][i],
            )
            check["same_labels"] += same
    return check


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from mtl.data import build_families, load_splits
    from mtl.encoder import load_tokenizer
    from mtl.evaluate import evaluate
    from mtl.experiment import experiment_from_dict

    hp = HParams(**spec["hp"])
    tok = AutoTokenizer.from_pretrained(spec["model"])
    rows = read_squad(Path(spec["data"]) / TRAIN_FILE, spec["train_cap"])
    features = prepare_train_features(rows, tok, hp)
    tokens = sum(len(ids) for ids in features["input_ids"])

    # mtl's own windows of the same questions and its eval windows of the dev sets (no mtl overrides).
    exp = experiment_from_dict(experiment_dict(spec, MTL_BASE))
    families = build_families(exp, load_tokenizer(exp.encoder))
    cache = Path(exp.train.cache_dir)
    (train_split,) = load_splits(exp, families, ["train"], cache_dir=cache)
    check = compare_windows(features, train_split.features)
    dev_splits = load_splits(exp, families, ["dev"], fit=False, cache_dir=cache)

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    set_seed(spec["seed"])
    model = AutoModelForQuestionAnswering.from_pretrained(spec["model"])
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
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(features),
        data_collator=DataCollatorWithPadding(tok),
        callbacks=[Clock()],
    )
    trainer.train()
    steps = trainer.state.global_step
    seconds = clock["end"] - clock["start"]

    class SpanLogits(torch.nn.Module):
        """The HF model as mtl's evaluator calls a model: (task, batch) → start/end logits."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, task: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            keys = ("input_ids", "attention_mask", "token_type_ids")
            out = self.inner(**{k: batch[k] for k in keys if k in batch})
            return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    results = evaluate(
        SpanLogits(trainer.model), families, dev_splits, hp.eval_batch_size, torch.device("cpu"), progress=False
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "windows": len(features["input_ids"]),
        "questions": len(rows),
        "steps": steps,
        "warmup_steps": args.get_warmup_steps(steps),
        "tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "optimizer": optimizer_label(trainer.optimizer),
        "window_check": check,
        "dev": dev_scores(results),
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
    stats = outcome.train_stats
    result = {
        "windows": len(split.features),
        "questions": len(split.examples),
        "steps": outcome.steps,
        "warmup_steps": warmup_steps(exp, trainer.total_steps),
        "tokens": sum(split.lengths),
        "train_seconds": stats["train/seconds"],
        "tokens_per_second": stats["train/tokens_per_second"],
        "optimizer": optimizer_label(trainer.optimizer),
        "dev": dev_scores(outcome.results),
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
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding squad/ and drcd/ (%(default)s)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="encoder folder (%(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run of every system per seed")
    p.add_argument("--train-cap", type=int, default=None,
                   help=f"first N training questions (default {FULL_TRAIN_CAP}; --quick {QUICK_TRAIN_CAP})")
    p.add_argument("--dev-cap", type=int, default=None,
                   help=f"first N questions of each dev set (default: all; --quick {QUICK_DEV_CAP})")
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
                   help=f"smoke run: first {QUICK_TRAIN_CAP} training and {QUICK_DEV_CAP} dev questions")
    return p.parse_args(argv)


def systems(args: argparse.Namespace) -> list[System]:
    out = [System("HF Trainer", "hf", []), System("mtl", "mtl", list(args.mtl_set))]
    for text in args.variant:
        try:
            name, overrides = parse_variant(text)
        except ValueError as err:
            sys.exit(f"qa_vs_hf: {err}")
        out.append(System(f"mtl {name}", "mtl", list(args.mtl_set) + overrides))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        sys.exit(f"qa_vs_hf: two rows share a name: {names}")
    return out


def check_inputs(args: argparse.Namespace) -> None:
    needed = [args.data / TRAIN_FILE] + [args.data / path for _, _, path in DEV_SETS]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        sys.exit(f"qa_vs_hf: data not found: {', '.join(missing)} (pass --data DIR)")
    if not (args.model / "config.json").is_file():
        sys.exit(f"qa_vs_hf: no encoder in {args.model} (pass --model DIR)")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_all(args: argparse.Namespace, rows: list[System], workdir: Path, train_cap: int | None,
            dev_cap: int | None) -> dict[str, list[dict[str, Any]]]:
    """Every system once per seed, each in a fresh process; the order alternates from seed to seed."""
    env = offline_env(workdir / "hf_home")
    hp = HParams()
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in rows}
    for k, seed in enumerate(args.seeds):
        for system in rows if k % 2 == 0 else list(reversed(rows)):
            name = f"{slug(system.name)}-s{seed}"
            spec = {
                "kind": system.kind,
                "name": name,
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
            runs[system.name].append(r)
            squad, drcd = r["dev"]["squad"], r["dev"]["drcd"]
            print(
                f"  seed {seed}  {system.name:20s} {r['windows']:5d} windows {r['steps']:4d} steps "
                f"{r['train_seconds']:7.1f} s train {r['tokens_per_second']:6.0f} tokens/s  "
                f"SQuAD EM/F1 {squad['exact_match']:5.2f}/{squad['f1']:5.2f}  "
                f"DRCD EM/F1 {drcd['exact_match']:5.2f}/{drcd['f1']:5.2f}"
                + ("  (read back)" if r.get("reused") else ""),
                flush=True,
            )
    return runs


def transfer(r: dict[str, Any]) -> float:
    inside = r["dev"]["squad"]["f1"]
    return r["dev"]["drcd"]["f1"] / inside if inside > 0 else float("nan")


def report(runs: dict[str, list[dict[str, Any]]], rows: list[System]) -> str:
    def col(name: str, get: Any, digits: int = 2) -> str:
        return mean_spread([get(r) for r in runs[name]], digits)

    table = []
    for s in rows:
        rs = runs[s.name]
        table.append(
            [
                s.name,
                "/".join(sorted({f"{r['windows']:,}" for r in rs})),
                "/".join(sorted({str(r["steps"]) for r in rs})),
                col(s.name, lambda r: r["dev"]["squad"]["exact_match"]),
                col(s.name, lambda r: r["dev"]["squad"]["f1"]),
                col(s.name, lambda r: r["dev"]["drcd"]["exact_match"]),
                col(s.name, lambda r: r["dev"]["drcd"]["f1"]),
                col(s.name, transfer, 3),
                col(s.name, lambda r: r["train_seconds"], 0),
                col(s.name, lambda r: r["tokens_per_second"], 0),
                col(s.name, lambda r: r["peak_rss_mib"], 0),
            ]
        )
    headers = ["system", "windows", "steps", "SQuAD EM", "SQuAD F1", "DRCD EM", "DRCD F1", "DRCD/SQuAD F1",
               "train s", "tokens/s", "peak MiB"]
    lines = [format_table(headers, table), "", "mtl ÷ HF (means):"]

    def mean(name: str, get: Any) -> float:
        values = [get(r) for r in runs[name]]
        return sum(values) / len(values)

    ref = rows[0].name
    for s in rows[1:]:
        parts = []
        for label, get in (
            ("SQuAD F1", lambda r: r["dev"]["squad"]["f1"]),
            ("DRCD F1", lambda r: r["dev"]["drcd"]["f1"]),
            ("DRCD/SQuAD F1", transfer),
            ("tokens/s", lambda r: r["tokens_per_second"]),
        ):
            a, b = mean(s.name, get), mean(ref, get)
            parts.append(f"{label} {a / b:.3f}×" if b > 0 else f"{label} -")
        lines.append(f"  {s.name:20s} " + ", ".join(parts))
    return "\n".join(lines)


def window_report(runs: dict[str, list[dict[str, Any]]], rows: list[System]) -> str:
    hf, mtl = runs[rows[0].name][0], runs[rows[1].name][0]
    c = hf["window_check"]
    verdict = "match" if hf["windows"] == mtl["windows"] == c["mtl_windows"] else "MISMATCH"
    return (
        f"Training windows of the first {hf['questions']:,} questions: HF (run_qa features) {hf['windows']:,}, "
        f"mtl {mtl['windows']:,}: {verdict}; mtl's windows equal to the reference's: tokens {c['same_tokens']:,}/"
        f"{c['hf_windows']:,}, answer labels {c['same_labels']:,}/{c['hf_windows']:,}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.data, args.model = args.data.expanduser().resolve(), args.model.expanduser().resolve()
    check_inputs(args)
    rows = systems(args)
    train_cap = args.train_cap or (QUICK_TRAIN_CAP if args.quick else FULL_TRAIN_CAP)
    dev_cap = args.dev_cap if args.dev_cap is not None else (QUICK_DEV_CAP if args.quick else None)
    dev_cap = dev_cap or None
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="qa_vs_hf-"))).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    hp = HParams()
    started = time.perf_counter()
    print(
        f"qa_vs_hf: encoder {args.model.name}; first {train_cap} questions of {TRAIN_FILE}, 1 epoch, windows of "
        f"{hp.max_length} tokens sharing {hp.stride}, batch {hp.batch_size}, lr {hp.lr:g}, warm-up "
        f"{hp.warmup:.0%} (rounded up), weight decay {hp.weight_decay}, fp32; dev: "
        f"{f'first {dev_cap} questions of each' if dev_cap else 'all questions'}; seeds {args.seeds}; "
        f"one fresh process per run; logs in {workdir}",
        flush=True,
    )
    for s in rows[1:]:
        print(f"  {s.name}: overrides {', '.join(MTL_BASE + s.overrides) or 'none (mtl defaults)'}", flush=True)
    try:
        runs = run_all(args, rows, workdir, train_cap, dev_cap)
        hf = runs[rows[0].name][0]
        dev = ", ".join(f"{k} {v['questions']} questions ({v['windows']} windows)" for k, v in hf["dev"].items())
        print(f"\nDev sets: {dev}; SQuAD v1.1 EM/F1, character-level for DRCD (zero-shot)")
        print(report(runs, rows))
        print("\n" + window_report(runs, rows))
        print(
            "Optimizer: HF "
            + ", ".join(sorted({r["optimizer"] for r in runs[rows[0].name]}))
            + "; mtl "
            + ", ".join(sorted({r["optimizer"] for s in rows[1:] for r in runs[s.name]}))
            + f"; warm-up steps: HF {hf['warmup_steps']}, mtl {runs[rows[1].name][0]['warmup_steps']}"
        )
        if args.json:
            settings = {"hp": asdict(hp), "train_cap": train_cap, "dev_cap": dev_cap, "seeds": args.seeds,
                        "systems": [asdict(s) for s in rows], "mtl_base": MTL_BASE}
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
