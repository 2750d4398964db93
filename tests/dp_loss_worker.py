"""One rank of the data-parallel loss check in test_loss_average.py (run as a script, once per rank).

Every rank builds the same tiny encoder with a NER and a UD head, takes its share (global[r::world],
as the sampler does) of one fixed global batch of real sentences, wraps the model in DDP on gloo and
backpropagates `mtl.loss.global_mean_loss`. Rank 0 also computes, on an undistributed copy, the
gradient of the whole global batch; and the gradient DDP gives for the per-rank means. It saves the
three gradients per task for the test to compare.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist

# run as a script: its folder (tests/) is first on sys.path
from conftest import DATA, tiny_encoder
from helpers import build, resolved

from mtl.core.config import DatasetConfig
from mtl.encoder import encoder_layers, load_encoder, make_mix_factory
from mtl.loss import global_mean_loss
from mtl.model import MultiTaskModel
from mtl.runtime import Runtime
from tasks.base import EncoderInfo


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in
            model.named_parameters()}


def main(out_file: str) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    runtime = Runtime.from_environment()
    enc = tiny_encoder(hidden=32, layers=2, heads=2)
    enc["layer_dropout"] = 0.0  # no random draws: ranks and the reference must compute the same function
    enc["from_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ud_ds = DatasetConfig(language="en", name="en_ewt", train=str(DATA / "ud" / "en_ewt" / "dev.conllu"))
    ner_ds = resolved("ner", language="en", name="conll2003", train=str(DATA / "ner" / "conll2003" / "dev.txt"),
                      format="conll2003")
    ner, enc_cfg, tok = build("ner", enc, {}, [ner_ds])
    ud, _, _ = build("ud", enc, {"arc_mlp": 16, "label_mlp": 8, "mlp_dropout": 0.0}, [ud_ds])
    global_batches = {}
    for name, fam, ds in (("ner", ner, ner_ds), ("ud", ud, ud_ds)):
        examples = fam.read(ds, "train")[:40]
        fam.fit(examples)
        feats = fam.featurize(examples, "train")
        # Five sentences of very different lengths: ranks get 3 and 2 sentences, and unequal word counts.
        feats = sorted(feats, key=lambda f: len(f["input_ids"]))
        global_batches[name] = [dict(feats[i]) for i in (0, 39, 5, 20, 1)]
    # The long sentence (on rank 1) lacks its lemmas (as `_`): the lemma term counts fewer words than the others.
    global_batches["ud"][1]["lemma"] = [-100] * len(global_batches["ud"][1]["lemma"])
    torch.manual_seed(0)
    encoder = load_encoder(enc_cfg, tok)
    layers = encoder_layers(encoder)
    info = EncoderInfo(encoder.config.hidden_size, layers, make_mix_factory(enc_cfg, layers), 0.0)
    model = MultiTaskModel(encoder, {"ner": ner.build_head(info), "ud": ud.build_head(info)})
    model.train()
    reference = copy.deepcopy(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    fams = {"ner": ner, "ud": ud}
    saved: dict = {}
    for task, batch in global_batches.items():
        shard = fams[task].collate(batch[rank::world])
        for rule in ("global", "per_rank_mean"):
            ddp.zero_grad(set_to_none=True)
            out = ddp(task, shard)
            if rule == "global":
                loss, saved[(task, "logged")] = global_mean_loss(out, runtime)
            else:
                loss = out["loss"]
            loss.backward()
            saved[(task, rule)] = grads(model)
        saved[(task, "items")] = [int(n) for n in out["loss_count"].tolist()]
        if rank == 0:
            reference.zero_grad(set_to_none=True)
            out = reference(task, fams[task].collate(batch))
            global_mean_loss(out, Runtime())[0].backward()
            saved[(task, "single")] = grads(reference)
            saved[(task, "single_loss")] = float(out["loss"].detach())
    counts: list = [None] * world
    dist.all_gather_object(counts, {k: v for k, v in saved.items() if k[1] in ("items", "logged")})
    if rank == 0:
        saved["counts_per_rank"] = counts
        keys = {"ner": ("labels",), "ud": ("upos", "xpos", "feats", "lemma", "heads", "deprels")}
        saved["labels"] = {t: [{k: list(f[k]) for k in keys[t]} for f in b] for t, b in global_batches.items()}
        torch.save(saved, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
