"""ViT: pre-norm encoder over image patches (``ViTModel``, ``ViTForImageClassification``), in BERT's module
layout with the norms moved before each branch.

Every patch and the class token count as tokens; the class token's state is the pooled output.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from edgeprune.models.adapters.bert import BertAdapter, bert_layer
from edgeprune.models.base import IMAGE, PRE_NORM, TransformerLayer, register


@register
class ViTAdapter(BertAdapter):
    family = "vit"
    model_types = ("vit",)
    modality = IMAGE
    residual = PRE_NORM
    pooling = "cls"

    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        # the attention residual is read by the pre-FFN norm; the FFN residual is the layer's output
        return [bert_layer(layer, layer.attention.attention, layer.layernorm_after, None)
                for layer in model.base_model.encoder.layer]

    def auto_class(self, config: dict[str, Any]) -> tuple[type, str]:
        from transformers import AutoModel, AutoModelForImageClassification

        if any(name.endswith("ForImageClassification") for name in config.get("architectures") or []):
            return AutoModelForImageClassification, "image-classification"
        return AutoModel, "feature-extraction"
