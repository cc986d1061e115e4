"""What an architecture adapter answers so the pruner can work on any transformer.

To add a family, write one file in ``edgeprune/models/adapters/`` with a ``ModelAdapter``
subclass decorated with ``@register``: name the family's ``model_type`` values, return a
``TransformerLayer`` per block, and set the head-count attributes its attention ``forward``
reads. Nothing else changes: slicing, importance, allocation, recovery, cost and export all
work from these handles, and the conformance test (tests/test_adapters.py) runs the new
adapter as soon as its tiny config is listed there.

The vocabulary (after SliceGPT's layer adapters and Torch-Pruning's coupled groups):

- An **attention unit** is what is removed together: one head, or under grouped-query
  attention one key/value head with its ``group_size`` query heads. It owns ``RowBlock``
  rows of every attention input projection (query, key, value — separate or fused) and a
  contiguous block of ``head_dim · group_size`` input columns of the output projection.
- An **FFN neuron** owns one row of every MLP input projection (up, and gate where there is
  one) and one input column of the output projection.
- **Where the residual is read**: the module whose input is residual + branch output
  (``attn_sum``/``ffn_sum``), or None when that sum is the block's own output. In post-norm
  blocks (BERT, DistilBERT, RoBERTa) both are LayerNorms, so least-squares recovery weights
  tokens by the norm's 1/σ; in pre-norm blocks (ViT, Llama) the sum flows on unnormalized.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from edgeprune.errors import PlanError

POST_NORM, PRE_NORM = "post-norm", "pre-norm"
TEXT, IMAGE = "text", "image"


@dataclass(frozen=True)
class RowBlock:
    """Rows of an input projection owned by a layer's units: unit ``u`` owns ``rows`` rows from
    ``offset + u · rows`` (a fused QKV projection appears once per part, with its offset)."""

    linear: nn.Linear
    rows: int
    offset: int = 0

    def unit_rows(self, units: list[int] | tuple[int, ...]) -> torch.Tensor:
        if not units:
            return torch.empty(0, dtype=torch.long)
        return torch.cat([torch.arange(self.offset + u * self.rows, self.offset + (u + 1) * self.rows)
                          for u in units])


@dataclass
class TransformerLayer:
    """Handles on the prunable linear maps of one transformer block."""

    block: nn.Module
    """The whole block: hidden states in (first argument), hidden states out."""
    attention: nn.Module
    """The module whose head-count attributes ``ModelAdapter.set_num_heads`` updates."""
    attn_in: tuple[RowBlock, ...]
    attn_out: nn.Linear
    ffn_in: tuple[RowBlock, ...]
    ffn_out: nn.Linear
    attn_sum: nn.Module | None
    """The module whose input is residual + attention output (None: the block's output)."""
    ffn_sum: nn.Module | None
    """The module whose input is residual + FFN output (None: the block's output)."""
    head_dim: int
    group_size: int = 1
    """Query heads per key/value head (1 without grouped-query attention)."""

    @property
    def unit_width(self) -> int:
        """Output-projection input columns of one attention unit."""
        return self.head_dim * self.group_size

    @property
    def num_heads(self) -> int:
        """Attention units (heads, or key/value groups) in this layer now."""
        return self.attn_out.in_features // self.unit_width

    @property
    def ffn_dim(self) -> int:
        return self.ffn_out.in_features

    @property
    def hidden_size(self) -> int:
        return self.attn_out.out_features

    def unit_macs(self, seq_len: int) -> tuple[int, int]:
        """Multiply-accumulates of one attention unit and of one FFN neuron for ``seq_len`` tokens.

        A unit: its rows of every attention input projection and its output-projection columns
        (L·d per row or column), plus scores and context for each of its query heads (2·L²·dh).
        A neuron: one row or column of each MLP projection. Norms and softmax are ignored
        (< 1% at these sizes); causal masking is not credited.
        """
        rows = sum(block.rows for block in self.attn_in) + self.unit_width
        per_unit = seq_len * self.hidden_size * rows + 2 * seq_len * seq_len * self.unit_width
        per_neuron = seq_len * self.hidden_size * (len(self.ffn_in) + 1)
        return per_unit, per_neuron

    def macs(self, seq_len: int) -> int:
        per_unit, per_neuron = self.unit_macs(seq_len)
        return self.num_heads * per_unit + self.ffn_dim * per_neuron


class ModelAdapter(ABC):
    """One architecture family: where its prunable units are and how to keep it consistent."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    modality: ClassVar[str] = TEXT
    """``text`` (token ids in) or ``image`` (pixel values in)."""
    residual: ClassVar[str] = POST_NORM
    uniform_attention: ClassVar[bool] = False
    """Whether every layer must keep the same number of attention units (a decoder's exported key/value cache
    declares one head count for all layers)."""
    pooling: ClassVar[str] = "mean"
    """How token states become one vector for fidelity: ``mean`` over real tokens, or ``cls``."""

    @abstractmethod
    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        """The transformer blocks, in order."""

    @abstractmethod
    def set_num_heads(self, layer: TransformerLayer, num_units: int) -> None:
        """Update the attributes the attention ``forward`` reads after units were sliced."""

    def add_output_biases(self, model: nn.Module) -> None:
        """Make sure every attention- and FFN-output projection has a bias (bias compensation writes into it), in a
        way a checkpoint's config records so the pruned model reloads. Families built with biases need nothing."""
        if any(p.bias is None for layer in self.layers(model) for p in (layer.attn_out, layer.ffn_out)):
            raise PlanError(f"{self.family} models have no bias on their output projections and their config "
                            "cannot add one, so bias compensation has nowhere to write",
                            "use --recover lstsq (a bias-free re-fit) instead")

    def auto_class(self, config: dict[str, Any]) -> tuple[type, str]:
        """The transformers Auto class that loads a checkpoint with this ``config``, and its optimum task."""
        from transformers import AutoModel, AutoModelForSequenceClassification

        if any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or []):
            return AutoModelForSequenceClassification, "text-classification"
        return AutoModel, "feature-extraction"

    def label_free(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
        """Whether ``sensitivity_loss`` must fall back to random projections (no task or model loss)."""
        return "labels" not in batch

    def sensitivity_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss whose mask gradients score units: the task loss when the batch has labels.

        Without labels, a distillation loss against the dense model has zero gradient at the
        dense point, so the loss is vᵀe for a random direction v ~ N(0, I) of the pooled first
        output e: squared gradients over directions estimate the Gauss-Newton (Fisher)
        diagonal of the output.
        """
        output = model(**batch)
        if not self.label_free(model, batch):
            return output.loss
        states = output[0]
        if states.dim() == 3:
            mask = token_mask(batch, states).unsqueeze(-1).to(states.dtype)
            states = (states * mask).sum(1) / mask.sum(1)
        return (states * torch.randn_like(states)).sum()


def token_mask(batch: dict[str, torch.Tensor], states: torch.Tensor) -> torch.Tensor:
    """Which positions of ``states`` (batch, positions, …) are real: the attention mask of a text
    batch; every position (all patches and the class token) of an image batch."""
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(states.shape[:2], dtype=torch.bool)
    return mask.bool()


REGISTRY: dict[str, ModelAdapter] = {}
"""model_type → adapter, filled by ``@register`` when ``edgeprune.models.adapters`` is imported."""


def register(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make an adapter available for each of its ``model_types``."""
    adapter = cls()
    for model_type in cls.model_types:
        REGISTRY[model_type] = adapter
    return cls


def encoder_macs(layers: list[TransformerLayer], seq_len: int) -> int:
    return sum(layer.macs(seq_len) for layer in layers)
