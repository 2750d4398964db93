"""Data at scale: memory per process and start time as the number of treebanks grows, with the feature
store (memory-mapped Arrow) against features held in memory, measured in the same run.

One `ud` task trains on K copies of a real treebank (each copy its own file and dataset, as a UDify-style
run over many treebanks is), for K in --copies. For each K, in fresh processes:

- memory: no feature store (`train.cache_dir` unset and the store switched off): every start reads and
  tokenises every source and holds examples and features as Python objects, as releases before the
  store did — the baseline;
- cold:   the feature store, empty: sources are read and tokenised once, and stored;
- warm:   the same store again: nothing is read or tokenised; features are mapped from disk;
- warm×N: the warm start under torchrun with --nproc processes (they map the same files).

Then masked LM on plain text: 20 steps over a generated text file of each --mlm-sizes (SQuAD paragraphs
repeated), in fresh processes; a file of 64 MiB or more is streamed (read in blocks while training), a
smaller one read and tokenised whole. Each prints the whole process's wall time and peak memory.

Each prints its peak resident memory (VmHWM) and private memory (RssAnon) per process, the start (set-up
until the first step: wall and CPU seconds) and the training tokens/s; then the extra bytes per training
word from K = smallest to K = largest, and ratios against the memory baseline.

    python benchmarks/data_scale.py                       # K = 1, 10, 50; 20 steps each
    python benchmarks/data_scale.py --copies 1 10 50 200 --workers 2
    python benchmarks/data_scale.py --quick               # K = 1, 3; 3 steps
    python benchmarks/data_scale.py --copies --mlm-sizes 1MB 1GiB   # the text part alone

The encoder is a small random BERT on the shared model's tokenizer by default (the data path is what is
measured; --model-weights trains the pretrained model instead).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from mtl.core.table import format_table

common.setdefault_env()

TINY = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 256}


def count_words(path: Path) -> int:
    """Syntactic words of a CoNLL-U file (integer ids; multi-word token ranges and empty nodes not counted)."""
    n = 0
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            head = line.split("\t", 1)[0]
            if head.isdigit():
                n += 1
    return n


def make_copies(source: Path, k: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(k):
        p = folder / f"copy{i:03d}.conllu"
        if not p.exists():
            shutil.copyfile(source, p)
        paths.append(p)
    return paths


def experiment(args: argparse.Namespace, copies: list[Path], work: Path, cache: Path | None) -> dict[str, Any]:
    encoder: dict[str, Any] = {"name": args.model, "max_length": 128}
    if not args.model_weights:
        encoder["from_config"] = TINY
    datasets = [{"language": "en", "name": p.stem, "train": str(p)} for p in copies]
    return {
        "name": "data-scale",
        "encoder": encoder,
        "tasks": {"ud": {"family": "ud", "options": {"skip_invalid": True}, "datasets": datasets}},
        "sampling": {"batch_size": args.batch_size},
        "train": {"seed": 42, "steps": args.steps, "output_dir": str(work / "run"), "keep_checkpoints": 1,
                  "log_every": 10**6, "cache_dir": str(cache) if cache else None,
                  "tokenize_workers": args.workers},
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }


UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def parse_size(text: str) -> int:
    """'1MB', '1GiB', '512KiB', '1000' → bytes."""
    upper = text.strip().upper()
    for unit in sorted(UNITS, key=len, reverse=True):
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * UNITS[unit])
    return int(upper)


def make_text(data: Path, size: int, path: Path) -> Path:
    """`size` bytes of real text, one SQuAD paragraph a line, repeated (written once)."""
    if path.exists() and path.stat().st_size == size:
        return path
    squad = json.loads((data / "squad/dev.json").read_text(encoding="utf-8"))
    text = "".join(p["context"].replace("\n", " ") + "\n" for a in squad["data"] for p in a["paragraphs"])
    chunk = text.encode("utf-8")
    with path.open("wb") as fh:
        left = size
        while left >= len(chunk):
            fh.write(chunk)
            left -= len(chunk)
        if left:  # whole lines, then one line of filler to the exact size
            tail = chunk[:left]
            tail = tail[: tail.rfind(b"\n") + 1]
            pad = left - len(tail)
            fh.write(tail + (b"x" * (pad - 1) + b"\n" if pad else b""))
    return path


def mlm_experiment(args: argparse.Namespace, text: Path, work: Path, streaming: bool | None) -> dict[str, Any]:
    encoder: dict[str, Any] = {"name": args.model, "max_length": 128}
    if not args.model_weights:
        encoder["from_config"] = TINY
    return {
        "name": "data-scale-mlm",
        "encoder": encoder,
        "tasks": {"mlm": {"family": "mlm", "datasets": [{"language": "en", "train": str(text),
                                                          **({} if streaming is None else {"streaming": streaming})}]}},
        "sampling": {"batch_size": args.batch_size},
        "train": {"seed": 42, "steps": args.steps, "output_dir": str(work / "run"), "keep_checkpoints": 1,
                  "log_every": 10**6, "cache_dir": str(work / "store")},
        "tracking": {"enabled": False},
        "launch": {"cpu": True},
    }


def _status(key: str) -> float:
    """A field of /proc/self/status in MiB (VmHWM: peak resident; RssAnon: private resident now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec_path: Path) -> None:
    """One run: set up (timed), train, report this process's figures."""
    import os

    from mtl import trainer as trainer_module

    spec = json.loads(spec_path.read_text())
    if spec["mode"] == "memory":
        trainer_module.feature_cache_dir = lambda exp: None  # the store switched off: features in memory
    from mtl.experiment import experiment_from_dict

    exp = experiment_from_dict(spec["experiment"])
    t = trainer_module.Trainer(exp, progress=False)
    figures: dict[str, Any] = {}
    setup = trainer_module.Trainer._setup

    def timed(self: Any) -> None:
        wall, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        setup(self)
        after = resource.getrusage(resource.RUSAGE_SELF)
        figures["start_s"] = time.perf_counter() - wall
        figures["start_cpu_s"] = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)

    trainer_module.Trainer._setup = timed
    outcome = t.fit()
    figures.update({
        "rank": int(os.environ.get("RANK", 0)),
        "tokens_per_second": outcome.train_stats["train/tokens_per_second"],
        "peak_rss_mib": _status("VmHWM"),
        "anon_mib": _status("RssAnon"),
        "features": sum(s.size for s in t.train_splits),
        "streamed": any(s.stream is not None for s in t.train_splits),
    })
    Path(spec["result"]).with_suffix(f".rank{figures['rank']}.json").write_text(json.dumps(figures))


def run(mode: str, nproc: int, raw: dict[str, Any], work: Path, hf_home: Path) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    result = work / f"{mode}.json"
    spec = work / f"{mode}.spec.json"
    spec.write_text(json.dumps({"experiment": raw, "mode": mode.split("x")[0], "result": str(result)}))
    script = [str(Path(__file__).resolve()), common.CHILD_FLAG, str(spec)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", *script]
    else:
        cmd = [sys.executable, *script]
    log = work / f"{mode}.log"
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=common.offline_env(hf_home), cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed (exit {proc.returncode}); end of {log}:\n{log.read_text()[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(work.glob(f"{mode}.rank*.json"))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    p.add_argument("--treebank", default="ud/en_ewt/train.conllu", help="the file copied K times (under --data)")
    p.add_argument("--model", default=str(common.DEFAULT_MODEL), help="tokenizer (and, with --model-weights, encoder)")
    p.add_argument("--model-weights", action="store_true", help="train the pretrained encoder, not a small random one")
    p.add_argument("--copies", type=int, nargs="*", default=None, help="values of K (default 1 10 50; none: skip)")
    p.add_argument("--mlm-sizes", nargs="*", default=None,
                   help="text file sizes for the masked-LM part (default 1MB 1GiB; --quick 1MB 80MiB; none: skip)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 20; --quick 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--nproc", type=int, default=2, help="processes of the warm distributed run (1: none)")
    p.add_argument("--workers", type=int, default=1, help="train.tokenize_workers of the cold builds")
    p.add_argument("--modes", default="memory,cold,warm,warmx", help="comma-separated, of memory, cold, warm, warmx")
    p.add_argument("--quick", action="store_true", help="smoke run: K = 1 and 3, 3 steps")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs here instead of a temporary folder")
    args = p.parse_args(argv)
    if args.copies is None:
        args.copies = [1, 3] if args.quick else [1, 10, 50]
    if args.mlm_sizes is None:
        args.mlm_sizes = ["1MB", "80MiB"] if args.quick else ["1MB", "1GiB"]
    args.steps = args.steps or (3 if args.quick else 20)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    t0 = time.perf_counter()
    out = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="data-scale-"))
    source = (args.data / args.treebank).resolve()
    words_per_copy = count_words(source)
    rows, figures = [], {}
    for k in args.copies:
        work = out / f"k{k}"
        copies = make_copies(source, k, out / "treebanks")
        cache = work / "store"
        shutil.rmtree(cache, ignore_errors=True)
        for mode in modes:
            if mode == "warmx" and args.nproc < 2:
                continue
            if mode.startswith("warm") and not (cache / "done").exists():
                run("coldfill", 1, experiment(args, copies, work, cache), work / "fill", out / "hf_home")
                (cache / "done").touch()
            nproc = args.nproc if mode == "warmx" else 1
            raw = experiment(args, copies, work / mode, None if mode == "memory" else cache)
            ranks = run(mode, nproc, raw, work, out / "hf_home")
            if mode == "cold":
                (cache / "done").touch()
            figures[(k, mode)] = ranks
            label = f"warm×{args.nproc}" if mode == "warmx" else mode
            rows.append((str(k), f"{k * words_per_copy:,}", label, str(len(ranks)),
                         " / ".join(f"{r['peak_rss_mib']:,.0f}" for r in ranks),
                         " / ".join(f"{r['anon_mib']:,.0f}" for r in ranks),
                         f"{max(r['start_s'] for r in ranks):.1f}", f"{max(r['start_cpu_s'] for r in ranks):.1f}",
                         f"{ranks[0]['tokens_per_second']:,.0f}"))
            print(f"K={k} {label}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if rows:
        print(f"\n{words_per_copy:,} training words per copy of {args.treebank}; {args.steps} steps, batch "
              f"{args.batch_size}\n" + format_table(
                  ("K", "train words", "run", "procs", "peak RSS MiB", "private MiB", "start s", "start CPU s",
                   "tokens/s"), rows, left=3))
        print(summary(args.copies, modes, figures, words_per_copy, args.nproc))
    if args.mlm_sizes:
        print(mlm_part(args, out))
    if args.keep is None:
        shutil.rmtree(out, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)


def mlm_part(args: argparse.Namespace, out: Path) -> str:
    """Masked LM over text files of each size: whole-process wall time and peak memory. The smallest file is
    also streamed (`streaming: true`): that run, with the same data path and the same full windows as the
    large file's, is the baseline the ratios are taken against."""
    rows, runs = [], []
    for n, text_size in enumerate(args.mlm_sizes):
        size = parse_size(text_size)
        text = make_text(args.data, size, out / f"text-{size}.txt")
        for streaming in ([None, True] if n == 0 else [None]):
            work = out / f"mlm-{text_size}-{'stream' if streaming else 'default'}"
            work.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            (r,) = run("mlm", 1, mlm_experiment(args, text, work, streaming), work, out / "hf_home")
            runs.append((text_size, size, time.perf_counter() - started, r))
            print(f"mlm {text_size}{' (streaming: true)' if streaming else ''}: done", flush=True)
    base = next(((w, r) for _, _, w, r in runs if r["streamed"]), None)
    for text_size, size, wall, r in runs:
        ratio = f"{wall / base[0]:.2f}×" if base else "-"
        extra = f"{r['peak_rss_mib'] - base[1]['peak_rss_mib']:+,.0f}" if base else "-"
        rows.append((text_size, f"{size:,}", "streamed" if r["streamed"] else "stored", f"{wall:.1f}",
                     f"{r['start_s']:.1f}", f"{r['peak_rss_mib']:,.0f}", ratio, extra,
                     f"{r['tokens_per_second']:,.0f}"))
    return (f"\n# masked LM, {args.steps} steps, batch {args.batch_size}, one process; ratios against the "
            "smallest file streamed\n" + format_table(
                ("text", "bytes", "read", "process s", "start s", "peak RSS MiB", "s ÷ base", "MiB − base",
                 "tokens/s"), rows, left=3))


def summary(ks: list[int], modes: list[str], figures: dict, words_per_copy: int, nproc: int) -> str:
    """Extra bytes per training word (smallest to largest K) and ratios against the memory baseline."""
    lines = ["", "# per training word and against the baseline"]
    lo, hi = min(ks), max(ks)
    words = (hi - lo) * words_per_copy
    for mode in modes:
        if (lo, mode) in figures and (hi, mode) in figures and words:
            for key, what in (("peak_rss_mib", "peak resident"), ("anon_mib", "private resident")):
                a = max(r[key] for r in figures[lo, mode])
                b = max(r[key] for r in figures[hi, mode])
                lines.append(f"{mode:>7}: {what}, K={lo}→{hi}: {(b - a) * 2**20 / words:,.0f} extra bytes per word")
    for k in ks:
        base = figures.get((k, "memory"))
        if not base:
            continue
        for mode in ("cold", "warm", "warmx"):
            if (k, mode) not in figures:
                continue
            r, b = figures[k, mode], base[0]
            peak = max(x["peak_rss_mib"] for x in r) / b["peak_rss_mib"]
            lines.append(f"K={k} {mode:>5} ÷ memory: peak RSS {peak:.2f}×, "
                         f"start {max(x['start_s'] for x in r) / b['start_s']:.2f}×, "
                         f"tokens/s {r[0]['tokens_per_second'] / b['tokens_per_second']:.2f}×")
    warm = [k for k in ks if (k, "warm") in figures]
    if len(warm) > 1:
        a, b = figures[min(warm), "warm"][0]["start_s"], figures[max(warm), "warm"][0]["start_s"]
        lines.append(f"warm start K={max(warm)} ÷ K={min(warm)}: {b / a:.2f}×")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == common.CHILD_FLAG:
        child(Path(sys.argv[2]))
    else:
        main()
