"""BERT-shaped post-norm encoders: BERT, RoBERTa, XLM-RoBERTa (bare, sequence classification,
and sentence-transformers models built on them). They share one layer layout."""

from __future__ import annotations

from torch import nn

from edgeprune.models.base import ModelAdapter, RowBlock, TransformerLayer, register


def bert_layer(layer: nn.Module, attention: nn.Module, attn_sum: nn.Module, ffn_sum: nn.Module | None
               ) -> TransformerLayer:
    """A layer in BERT's module layout: ``attention`` holds query/key/value, ``layer.attention.output.dense``
    projects back, ``layer.intermediate.dense`` / ``layer.output.dense`` are the FFN."""
    head_dim = attention.attention_head_size
    return TransformerLayer(
        block=layer, attention=attention,
        attn_in=tuple(RowBlock(linear, head_dim) for linear in (attention.query, attention.key, attention.value)),
        attn_out=layer.attention.output.dense, ffn_in=(RowBlock(layer.intermediate.dense, 1),),
        ffn_out=layer.output.dense, attn_sum=attn_sum, ffn_sum=ffn_sum, head_dim=head_dim)


@register
class BertAdapter(ModelAdapter):
    family = "bert"
    model_types = ("bert", "roberta", "xlm-roberta")

    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        return [bert_layer(layer, layer.attention.self, layer.attention.output.LayerNorm, layer.output.LayerNorm)
                for layer in model.base_model.encoder.layer]

    def set_num_heads(self, layer: TransformerLayer, num_units: int) -> None:
        layer.attention.num_attention_heads = num_units
        layer.attention.all_head_size = num_units * layer.head_dim
