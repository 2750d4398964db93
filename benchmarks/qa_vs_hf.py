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
steps, seconds and tokens/s (non-padding tokens of every epoch over the training loop's seconds; model
loading, tokenisation and evaluation are outside it), then mtl ÷ HF ratios. With several seeds each
figure is the mean ± standard deviation, and each run is listed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common

TRAIN_FILE = "squad/train.json"
DEV_SETS = (("squad", "en", "squad/dev.json"), ("drcd", "zh-TW", "drcd/dev.json"))  # in-language, zero-shot
CAPS = common.Caps(full_train=4000, quick_train=48, quick_dev=8)
# mtl runs with its defaults: for QA they are the head AutoModelForQuestionAnswering has (the last
# layer, no dropout before the scorer), so nothing is overridden.
MTL_BASE: list[str] = []


@dataclass(frozen=True)
class HParams(common.ParityHParams):
    """The settings both systems share: common.ParityHParams (warm-up, weight decay, clipping, eval batch) and these."""

    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 256
    stride: int = 96  # tokens shared by consecutive windows (HF `stride` = mtl `doc_stride`)
    n_best: int = 20
    max_answer_length: int = 30


# --------------------------------------------------------------------------- shared by both children


def experiment_dict(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The mtl experiment: the capped training file, and the capped dev sets as datasets of their own
    (`max_examples` caps every split of a dataset, and train and dev take different caps)."""
    hp = HParams(**spec["hp"])
    datasets: list[dict[str, Any]] = [
        {"name": "squad_train", "language": "en", "train": TRAIN_FILE, "max_examples": spec["train_cap"]}
    ]
    for name, language, path in DEV_SETS:
        datasets.append({"name": name, "language": language, "dev": path, "max_examples": spec["dev_cap"]})
    tasks = {
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
    }
    return common.mtl_experiment(spec, hp, tasks, overrides)


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
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, set_seed

    from mtl.data import build_families, load_splits
    from mtl.encoder import load_tokenizer
    from mtl.evaluate import evaluate
    from mtl.experiment import experiment_from_dict
    from mtl.runtime import Runtime

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
    out_dir = Path(spec["workdir"]) / spec["name"]
    args = common.hf_training_args(hp, out_dir, spec["seed"])
    trainer, seconds = common.hf_fit(model, args, Dataset.from_dict(features), DataCollatorWithPadding(tok))

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
        SpanLogits(trainer.model), families, dev_splits, hp.eval_batch_size, Runtime.local("cpu"), progress=False
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        **common.hf_figures(trainer, seconds, len(features["input_ids"]), "questions", len(rows), tokens),
        "window_check": check,
        "dev": dev_scores(results),
    }


# --------------------------------------------------------------------------- mtl


def run_mtl(spec: dict[str, Any]) -> dict[str, Any]:
    from mtl.experiment import experiment_from_dict

    exp = experiment_from_dict(experiment_dict(spec, MTL_BASE + spec["overrides"]))
    trainer, outcome = common.train_mtl_like_trainer(exp, spec["threads"])
    result = {**common.mtl_figures(exp, trainer, outcome, "questions"), "dev": dev_scores(outcome.results)}
    shutil.rmtree(outcome.output_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- planning and reporting


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA,
                   help="folder holding squad/ and drcd/ (%(default)s)")
    p.add_argument("--model", type=Path, default=common.DEFAULT_MODEL, help="encoder folder (%(default)s)")
    common.add_parity_args(p, "questions", "first N questions of each dev set", CAPS)
    return p.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    needed = [args.data / TRAIN_FILE] + [args.data / path for _, _, path in DEV_SETS]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        sys.exit(f"qa_vs_hf: data not found: {', '.join(missing)} (pass --data DIR)")
    if not (args.model / "config.json").is_file():
        sys.exit(f"qa_vs_hf: no encoder in {args.model} (pass --model DIR)")


def run_all(parity: common.ParityRuns) -> dict[str, list[dict[str, Any]]]:
    """Every system once per seed, each in a fresh process; the order alternates from seed to seed."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in parity.rows}
    for k, seed in enumerate(parity.args.seeds):
        for system in common.in_seed_order(parity.rows, k):
            r = parity.run(system, seed, f"{common.slug(system.name)}-s{seed}")
            runs[system.name].append(r)
            squad, drcd = r["dev"]["squad"], r["dev"]["drcd"]
            scores = (f"SQuAD EM/F1 {squad['exact_match']:5.2f}/{squad['f1']:5.2f}  "
                      f"DRCD EM/F1 {drcd['exact_match']:5.2f}/{drcd['f1']:5.2f}")
            print(common.run_line(seed, f"{system.name:20s}", r, scores), flush=True)
    return runs


def transfer(r: dict[str, Any]) -> float:
    inside = r["dev"]["squad"]["f1"]
    return r["dev"]["drcd"]["f1"] / inside if inside > 0 else float("nan")


def report(runs: dict[str, list[dict[str, Any]]], rows: list[common.System]) -> str:
    scores = [
        (lambda r: r["dev"]["squad"]["exact_match"], 2),
        (lambda r: r["dev"]["squad"]["f1"], 2),
        (lambda r: r["dev"]["drcd"]["exact_match"], 2),
        (lambda r: r["dev"]["drcd"]["f1"], 2),
        (transfer, 3),
    ]
    headers = ["SQuAD EM", "SQuAD F1", "DRCD EM", "DRCD F1", "DRCD/SQuAD F1"]
    lines = [common.parity_table(rows, runs, headers, scores), "", "mtl ÷ HF (means):"]
    figures = (
        ("SQuAD F1", lambda r: r["dev"]["squad"]["f1"]),
        ("DRCD F1", lambda r: r["dev"]["drcd"]["f1"]),
        ("DRCD/SQuAD F1", transfer),
        ("tokens/s", lambda r: r["tokens_per_second"]),
    )
    for s in rows[1:]:
        lines.append(f"  {s.name:20s} " + common.ratios(runs[s.name], runs[rows[0].name], figures))
    return "\n".join(lines)


def window_report(runs: dict[str, list[dict[str, Any]]], rows: list[common.System]) -> str:
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
    parity = common.ParityRuns(Path(__file__).resolve(), args, "qa_vs_hf", CAPS, HParams(), MTL_BASE)
    hp, dev_cap = parity.hp, parity.dev_cap
    setup = (f"first {parity.train_cap} questions of {TRAIN_FILE}, {hp.epochs} epoch(s), windows of "
             f"{hp.max_length} tokens sharing {hp.stride}, batch {hp.batch_size}")
    with parity.session(setup, f"first {dev_cap} questions of each" if dev_cap else "all questions"):
        runs = run_all(parity)
        rows = parity.rows
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
        parity.write_json({}, runs)


if __name__ == "__main__":
    common.child_or_main(main, {"hf": run_hf, "mtl": run_mtl})
