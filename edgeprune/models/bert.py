"""BERT family: BertModel, BertForSequenceClassification and sentence-transformers built on them."""

from __future__ import annotations

from torch import nn

from edgeprune.models.base import ModelAdapter, TransformerLayer


class BertAdapter(ModelAdapter):
    family = "bert"
    model_types = ("bert",)

    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        return [
            TransformerLayer(
                block=layer,
                attention=layer.attention.self,
                query=layer.attention.self.query,
                key=layer.attention.self.key,
                value=layer.attention.self.value,
                attn_out=layer.attention.output.dense,
                ffn_in=layer.intermediate.dense,
                ffn_out=layer.output.dense,
                attn_norm=layer.attention.output.LayerNorm,
                ffn_norm=layer.output.LayerNorm,
                head_dim=layer.attention.self.attention_head_size,
            )
            for layer in model.base_model.encoder.layer
        ]

    def set_num_heads(self, layer: TransformerLayer, num_heads: int) -> None:
        layer.attention.num_attention_heads = num_heads
        layer.attention.all_head_size = num_heads * layer.head_dim
