"""DistilBERT: post-norm encoder layers with their own module names (q_lin … lin2)."""

from __future__ import annotations

from torch import nn

from edgeprune.models.base import ModelAdapter, RowBlock, TransformerLayer, register


@register
class DistilBertAdapter(ModelAdapter):
    family = "distilbert"
    model_types = ("distilbert",)

    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        result = []
        for layer in model.base_model.transformer.layer:
            attention = layer.attention
            head_dim = attention.dim // attention.n_heads
            result.append(TransformerLayer(
                block=layer, attention=attention,
                attn_in=tuple(RowBlock(linear, head_dim) for linear in (attention.q_lin, attention.k_lin,
                                                                         attention.v_lin)),
                attn_out=attention.out_lin, ffn_in=(RowBlock(layer.ffn.lin1, 1),), ffn_out=layer.ffn.lin2,
                attn_sum=layer.sa_layer_norm, ffn_sum=layer.output_layer_norm, head_dim=head_dim))
        return result

    def set_num_heads(self, layer: TransformerLayer, num_units: int) -> None:
        layer.attention.n_heads = num_units
        layer.attention.dim = num_units * layer.head_dim
