"""Launch profiles side by side: training tokens/s and peak memory per process for one process, DDP,
ZeRO-2 and ZeRO-3 (two processes each by default), with ratios against one process measured in the same run.

The same multi-task experiment (SST-2 classification and CoNLL-2003 NER on the pretrained multilingual
encoder, one global batch for every profile) is trained once per profile, each in fresh processes
(`torchrun --standalone` for more than one). Each process reports the tokens/s of the training loop
and its own peak memory (resident set on CPU; on a GPU also the peak CUDA allocation).

    python benchmarks/scale_profiles.py                 # 40 steps per profile
    python benchmarks/scale_profiles.py --quick         # smoke run: 3 steps on a tiny random encoder
    python benchmarks/scale_profiles.py --nproc 4 --profiles single,zero3

On CPU, torchrun gives each process one thread where a lone process takes all cores, so a ratio
there shows what the profile costs on the same cores, not what a second GPU buys.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common
from mtl.core.table import format_table

common.setdefault_env()  # before torch loads

# name → (launch settings, processes: 1 or the --nproc of the run)
PROFILES: dict[str, tuple[list[str], bool]] = {
    "single": (["launch.profile=single"], False),
    "ddp": (["launch.profile=torchrun"], True),
    "zero2": (["launch.profile=deepspeed", "launch.zero_stage=2"], True),
    "zero3": (["launch.profile=deepspeed", "launch.zero_stage=3"], True),
}
TINY = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 256}


def experiment(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    cap = 64 if args.quick else 2000
    encoder: dict[str, Any] = {"max_length": 128}
    if args.quick:
        encoder["from_config"] = TINY  # the model's tokenizer, a small random encoder
    tasks = {
        "sst2": {"family": "classification", "datasets": [{
            "language": "en", "train": "glue/SST-2/train.tsv", "fields": {"text": "sentence", "label": "label"},
            "max_examples": cap}]},
        "ner": {"family": "ner", "datasets": [{
            "language": "en", "format": "conll2003", "train": "ner/conll2003/train.txt", "max_examples": cap}]},
    }
    steps = args.steps or (3 if args.quick else 40)
    return common.experiment_dict("scale-profiles", args, out_dir, steps, encoder, tasks,
                                  {"batch_size": args.batch_size or (8 if args.quick else 32)},
                                  {"log_every": 10**6, "eval_every": None})


def child(spec_path: Path) -> None:
    """One process of one profile: train, then write this rank's figures."""
    import os

    import torch

    from mtl.experiment import experiment_from_dict
    from mtl.trainer import Trainer

    spec = json.loads(spec_path.read_text())
    exp = experiment_from_dict(spec["experiment"])  # training only: no dev sets, so nothing is evaluated
    trainer = Trainer(exp, progress=False)
    outcome = trainer.fit()
    rank = int(os.environ.get("RANK", 0))
    figures = {
        "rank": rank,
        "world": trainer.world,
        "tokens_per_second": outcome.train_stats["train/tokens_per_second"],
        "train_seconds": outcome.train_stats["train/seconds"],
        "peak_rss_mib": common.peak_rss_mib(),
    }
    if torch.cuda.is_available():
        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(spec["result"]).with_suffix(f".rank{rank}.json").write_text(json.dumps(figures))


def run_profile(name: str, nproc: int, args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    """Train one profile in fresh processes; every rank's figures."""
    settings, many = PROFILES[name]
    work = out_dir / name
    work.mkdir(parents=True)
    raw = experiment(args, work)
    from mtl.core.overrides import set_override

    for assignment in [*settings, f"launch.nproc_per_node={nproc if many else 1}"]:
        set_override(raw, assignment)
    raw["launch"]["cpu"] = not args.gpu
    result = work / "result.json"
    spec = work / "spec.json"
    spec.write_text(json.dumps({"experiment": raw, "result": str(result)}))
    script = [str(Path(__file__).resolve()), common.CHILD_FLAG, str(spec)]
    if many:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", *script]
    else:
        cmd = [sys.executable, *script]
    env = common.offline_env(out_dir / "hf_home")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(common.REPO / ".cache" / "torch_extensions"))
    log = work / "log.txt"
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"profile {name} failed (exit {proc.returncode}); end of {log}:\n{log.read_text()[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(work.glob("result.rank*.json"))]


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    base = rows.get("single")
    ref_tps = base[0]["tokens_per_second"] if base else None
    ref_mem = max(r["peak_rss_mib"] for r in base) if base else None
    cuda = any("peak_cuda_mib" in r for ranks in rows.values() for r in ranks)
    out = []
    for name, ranks in rows.items():
        tps = ranks[0]["tokens_per_second"]  # the trainer counts every rank's tokens
        mem = max(r["peak_rss_mib"] for r in ranks)
        row = [name, str(len(ranks)), f"{tps:,.0f}", f"{tps / ref_tps:.2f}×" if ref_tps else "-",
               " / ".join(f"{r['peak_rss_mib']:,.0f}" for r in ranks), f"{mem / ref_mem:.2f}×" if ref_mem else "-"]
        if cuda:
            row.append(" / ".join(f"{r.get('peak_cuda_mib', 0):,.0f}" for r in ranks))
        out.append(tuple(row))
    head = ["profile", "procs", "tokens/s", "÷ single", "peak RSS MiB per rank", "÷ single"]
    if cuda:
        head.append("peak CUDA MiB per rank")
    return format_table(tuple(head), out, left=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA)
    p.add_argument("--model", default=str(common.DEFAULT_MODEL), help="pretrained encoder (folder or hub name)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per profile (default 40; --quick 3)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch (default 32; --quick 8)")
    p.add_argument("--nproc", type=int, default=2, help="processes of the distributed profiles")
    p.add_argument("--profiles", default=",".join(PROFILES), help=f"comma-separated, of {', '.join(PROFILES)}")
    p.add_argument("--gpu", action="store_true", help="train on GPUs (default: CPU)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--encoder-lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 steps of a tiny random encoder")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs here instead of a temporary folder")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        p.error(f"unknown profile(s) {', '.join(unknown)} (known: {', '.join(PROFILES)})")
    t0 = time.perf_counter()
    out_dir = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="scale-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in names:
        rows[name] = run_profile(name, args.nproc, args, out_dir)
        print(f"{name}: done", flush=True)
    print(f"\n{args.steps or (3 if args.quick else 40)} steps per profile, global batch "
          f"{args.batch_size or (8 if args.quick else 32)}, {args.nproc} processes for ddp/zero\n{table(rows)}")
    if args.keep is None:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"wall time: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == common.CHILD_FLAG:
        child(Path(sys.argv[2]))
    else:
        main()
