"""One shared encoder, one head per task."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mtl.core.config import Experiment
from mtl.core.typed_yaml import error_at
from mtl.encoder import ScalarMix, encoder_info, load_encoder
from tasks.base import TaskFamily

ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class MultiTaskModel(nn.Module):
    """Runs the shared encoder once per batch and hands every hidden layer to the batch's task head.

    A head that reads only the first token of each row (`reads_first_token`: classification, whose long
    inputs become many window rows) gets a batch of windows (`window_example`) of more rows than `train_rows`
    (training) or `eval_rows` (evaluation) encoded that many rows at a time: one huge input then costs the
    encoder no more than an ordinary batch, and the head pools the windows' first-token vectors afterwards, as
    it would have."""

    def __init__(self, encoder: nn.Module, heads: Mapping[str, nn.Module], train_rows: int | None = None,
                 eval_rows: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(dict(heads))
        accepted = inspect.signature(encoder.forward).parameters
        self._encoder_inputs = tuple(k for k in ENCODER_INPUTS if k in accepted)
        self.train_rows = train_rows  # None: every row of a batch in one pass
        self.eval_rows = eval_rows

    def forward(self, task: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: batch[k] for k in self._encoder_inputs if k in batch}
        head = self.heads[task]
        limit = self.train_rows if self.training else self.eval_rows
        # Only a batch of windows is split (rows beyond its examples): an ordinary batch, even a large one of a
        # token budget, keeps its one pass, its speed and its dropout draws.
        if (limit is not None and "window_example" in batch and inputs["input_ids"].shape[0] > limit
                and getattr(head, "reads_first_token", False) and not _partitioned(self.encoder)):
            return head(self._first_tokens(inputs, limit), batch)
        out = self.encoder(**inputs, output_hidden_states=True, return_dict=True)
        return head(out.hidden_states, batch)

    def _first_tokens(self, inputs: dict[str, torch.Tensor], limit: int) -> tuple[torch.Tensor, ...]:
        """Every layer's first-token vectors (rows × 1 × hidden), the encoder seeing `limit` rows at a time.

        Only these vectors outlive a pass (copied, so no pass's full layers stay alive through a view); a
        pass drops the columns that are padding in all of its rows. Gradients flow through every pass."""
        rows = inputs["input_ids"].shape[0]
        parts: list[list[torch.Tensor]] = []
        for start in range(0, rows, limit):
            chunk = {k: v[start : start + limit] for k, v in inputs.items()}
            if "attention_mask" in chunk:
                width = int(chunk["attention_mask"].any(dim=0).nonzero().max()) + 1
                chunk = {k: v[:, :width] for k, v in chunk.items()}
            out = self.encoder(**chunk, output_hidden_states=True, return_dict=True)
            parts.append([h[:, :1].clone() for h in out.hidden_states])
        return tuple(torch.cat(layer, dim=0) for layer in zip(*parts, strict=True))

    def parameter_groups(
        self, encoder_lr: float, head_lr: float, weight_decay: float, mix_lr: float | None = None
    ) -> list[dict]:
        """Encoder, heads and scalar mixes learn at their own rates; no weight decay on biases,
        LayerNorm weights or mix weights (decay would pull a mix back towards uniform).

        Each task's head parameters form groups of their own (key "task"): a task absent from a step
        leaves its groups without gradients, which AdamW skips; under DeepSpeed ZeRO, where a group is
        one flat tensor, the engine skips such groups by this key."""
        mix_params = {id(p) for m in self.modules() if isinstance(m, ScalarMix) for p in m.parameters()}
        rates = {"encoder": encoder_lr, "heads": head_lr, "mix": head_lr if mix_lr is None else mix_lr}
        groups: dict[tuple[str, str, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            part = "encoder" if name.startswith("encoder.") else "mix" if id(param) in mix_params else "heads"
            task = name.split(".")[1] if name.startswith("heads.") else ""
            no_decay = (
                part == "mix" or param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias")
            )
            groups.setdefault((part, task, no_decay), []).append(param)
        out = []
        for (part, task, no_decay), params in sorted(groups.items()):
            out.append(
                {
                    "params": params,
                    "lr": rates[part],
                    "weight_decay": 0.0 if no_decay else weight_decay,
                    "name": part if part == "mix" else f"{part}{'_no_decay' if no_decay else ''}",
                    "task": task or None,
                }
            )
        return out


def _partitioned(encoder: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the encoder: every rank must then run the same encoder passes (each
    gathers the weights), so a batch's rows go through in one pass as on every other rank."""
    first = next(encoder.parameters(), None)
    return first is not None and hasattr(first, "ds_id")


def check_positions(exp: Experiment, config: Any) -> None:
    """encoder.max_length must fit the encoder's position embeddings (else the first forward pass fails)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return
    if "roberta" in str(getattr(config, "model_type", "")) or getattr(config, "model_type", "") == "camembert":
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1  # positions count from the padding id + 1
    if exp.encoder.max_length <= positions:
        return
    message = (f"{exp.encoder.max_length} is more than the {positions} positions of {exp.encoder.name}; set "
               f"encoder.max_length to {positions} or less (long inputs are cut into windows by each family)")
    raise error_at(exp.source, ("encoder", "max_length"), message, exp.overrides)


def build_model(
    exp: Experiment, families: dict[str, TaskFamily], tokenizer: Any, encoder: nn.Module | None = None
) -> MultiTaskModel:
    """The shared encoder (loaded, unless given) with every family's head, for training and inference alike."""
    pretrained = encoder is None and exp.encoder.from_config is None  # heads may reuse the checkpoint's own head
    encoder = encoder if encoder is not None else load_encoder(exp.encoder, tokenizer)
    check_positions(exp, encoder.config)
    heads = {
        name: fam.build_head(encoder_info(exp.encoder, encoder, exp.tasks[name], type(fam), pretrained))
        for name, fam in families.items()
    }
    # long inputs' windows pass through the encoder at most a batch's worth of rows at a time
    return MultiTaskModel(encoder, heads, exp.sampling.batch_size, exp.train.eval_batch_size)
