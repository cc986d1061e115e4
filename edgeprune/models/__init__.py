"""Architecture adapters, model loading and saving."""

from __future__ import annotations

from torch import nn

from edgeprune.errors import UnsupportedModelError
from edgeprune.models.base import ModelAdapter, TransformerLayer, encoder_macs, layer_macs
from edgeprune.models.bert import BertAdapter

ADAPTERS: dict[str, ModelAdapter] = {
    model_type: adapter for adapter in (BertAdapter(),) for model_type in adapter.model_types
}


def adapter_for_type(model_type: str) -> ModelAdapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"no pruning adapter for architecture '{model_type}'",
            f"use a model of a supported family ({', '.join(sorted(ADAPTERS))}) "
            "or add an adapter in edgeprune/models/",
        ) from None


def adapter_for(model: nn.Module) -> ModelAdapter:
    config = getattr(model, "config", None)
    return adapter_for_type(getattr(config, "model_type", type(model).__name__))


__all__ = ["ADAPTERS", "ModelAdapter", "TransformerLayer", "adapter_for", "adapter_for_type",
           "encoder_macs", "layer_macs"]
