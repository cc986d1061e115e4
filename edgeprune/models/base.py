"""What an architecture adapter must answer so the pruner can work on it.

To add a transformer family (RoBERTa, DistilBERT, XLM-R, ...), write one file with a
``ModelAdapter`` subclass that names the family's ``model_type`` values, returns a
``TransformerLayer`` per encoder layer and sets the head-count attributes the family's
attention module reads in ``forward``; then register it in ``edgeprune/models/__init__.py``.
Slicing, importance, allocation and cost all work from these handles alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn


@dataclass
class TransformerLayer:
    """Handles on the prunable linear maps of one encoder layer.

    Heads are contiguous blocks of ``head_dim`` output rows of query/key/value and
    input columns of ``attn_out``; FFN neurons are output rows of ``ffn_in`` and input
    columns of ``ffn_out``. ``attn_norm`` / ``ffn_norm`` are the modules whose input is that
    projection's output added to the residual stream (post-LN: the LayerNorm); recovery
    re-fits each projection to match the dense model there.
    """

    block: nn.Module
    """The whole encoder layer: hidden states in (first argument), hidden states out."""
    attention: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    attn_norm: nn.Module
    ffn_norm: nn.Module
    head_dim: int

    @property
    def num_heads(self) -> int:
        return self.query.out_features // self.head_dim

    @property
    def ffn_dim(self) -> int:
        return self.ffn_in.out_features

    @property
    def hidden_size(self) -> int:
        return self.query.in_features


class ModelAdapter(ABC):
    """One architecture family: where its prunable units are and how to keep it consistent."""

    family: str
    model_types: tuple[str, ...]

    @abstractmethod
    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        """The encoder layers, in order."""

    @abstractmethod
    def set_num_heads(self, layer: TransformerLayer, num_heads: int) -> None:
        """Update the attributes the attention ``forward`` reads after heads were sliced."""


def layer_macs(hidden: int, num_heads: int, head_dim: int, ffn_dim: int, seq_len: int) -> int:
    """Multiply-accumulates of one encoder layer for one sequence of ``seq_len`` tokens.

    Per head: Q/K/V and output projections (4·L·d·dh) plus scores and context (2·L²·dh);
    per FFN neuron: its input and output rows (2·L·d). Layer norms and softmax are
    ignored (< 1% at these sizes).
    """
    per_head = 4 * seq_len * hidden * head_dim + 2 * seq_len * seq_len * head_dim
    per_neuron = 2 * seq_len * hidden
    return num_heads * per_head + ffn_dim * per_neuron


def encoder_macs(layers: list[TransformerLayer], seq_len: int) -> int:
    return sum(
        layer_macs(layer.hidden_size, layer.num_heads, layer.head_dim, layer.ffn_dim, seq_len)
        for layer in layers
    )
