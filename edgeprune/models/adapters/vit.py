"""ViT: pre-norm encoder over image patches (``ViTModel``, ``ViTForImageClassification``).

Every patch and the class token count as tokens; the class token's state is the pooled output.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgeprune.models.base import IMAGE, PRE_NORM, ModelAdapter, RowBlock, TransformerLayer, register


@register
class ViTAdapter(ModelAdapter):
    family = "vit"
    model_types = ("vit",)
    modality = IMAGE
    residual = PRE_NORM
    pooling = "cls"

    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        result = []
        for layer in model.base_model.encoder.layer:
            attention = layer.attention.attention
            head_dim = attention.attention_head_size
            result.append(TransformerLayer(
                block=layer, attention=attention,
                attn_in=tuple(RowBlock(linear, head_dim) for linear in (attention.query, attention.key,
                                                                         attention.value)),
                attn_out=layer.attention.output.dense,
                ffn_in=(RowBlock(layer.intermediate.dense, 1),), ffn_out=layer.output.dense,
                attn_sum=layer.layernorm_after, ffn_sum=None, head_dim=head_dim))
        return result

    def set_num_heads(self, layer: TransformerLayer, num_units: int) -> None:
        layer.attention.num_attention_heads = num_units
        layer.attention.all_head_size = num_units * layer.head_dim

    def auto_class(self, config: dict[str, Any]) -> tuple[type, str]:
        from transformers import AutoModel, AutoModelForImageClassification

        if any(name.endswith("ForImageClassification") for name in config.get("architectures") or []):
            return AutoModelForImageClassification, "image-classification"
        return AutoModel, "feature-extraction"
