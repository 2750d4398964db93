"""The training loss of one micro-batch, averaged over the items of the global batch.

A head gives its loss as sums and item counts, one entry per term (`tasks.base.loss_output`):
labelled words for tagging and parsing, examples for classification, windows for QA. Ranks of a
data-parallel run hold different numbers of items (sentences differ in length; a global batch of
odd size splits unevenly), so the mean of the per-rank means is not the mean over the batch.

Here the counts are summed over all ranks with one `all_reduce`, and each rank backpropagates

    loss = world · Σ_k sum_k / global_count_k

Data-parallel training averages gradients over ranks (DDP, DeepSpeed alike), which cancels the
factor `world`: the gradient is that of Σ_k (Σ_ranks sum_k) / global_count_k, the loss one process
computes on the whole global batch. The rule sits outside any launch profile: it needs only the
runtime's all-reduce (mtl/runtime.py) and that the engine averages gradients over the data-parallel ranks.

Gradient accumulation: every micro-batch holds one (task, language) group, and the micro-batches of
one optimizer step may come from different tasks, whose items (words, questions) are not one unit.
So each micro-batch is averaged over its own global items (all ranks), and the micro-batches of a
step weigh equally (the trainer divides by `train.grad_accum`), as the sampler's rates are per batch.
"""

from __future__ import annotations

import torch

from mtl.runtime import Runtime


def scale_loss(sums: torch.Tensor, global_counts: torch.Tensor, world: int) -> torch.Tensor:
    """world · Σ_k sums_k / global_counts_k; a term no rank has items for adds zero."""
    return (sums / global_counts.clamp(min=1)).sum() * world


def global_mean_loss(out: dict[str, torch.Tensor], runtime: Runtime) -> tuple[torch.Tensor, float]:
    """(loss to backpropagate, global mean to log) for one micro-batch's head output.

    Every rank must call it at the same micro-step (all ranks run the same task at each step, so
    they hold the same loss terms). A head that gives no counts keeps its own mean `loss`.
    """
    if "loss_sum" not in out:
        loss = out["loss"]
        return loss, float(loss.detach().float())
    sums, counts = out["loss_sum"].float(), out["loss_count"].float()
    totals = torch.cat([sums.detach(), counts])
    runtime.all_reduce(totals)  # one collective: the global sums (to log) and the global counts
    global_sums, global_counts = totals.chunk(2)
    logged = float((global_sums / global_counts.clamp(min=1)).sum())
    return scale_loss(sums, global_counts, runtime.world), logged
