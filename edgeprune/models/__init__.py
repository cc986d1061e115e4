"""Architecture adapters, model loading and saving."""

from __future__ import annotations

from torch import nn

import edgeprune.models.adapters  # noqa: F401  (registers every adapter)
from edgeprune.errors import UnsupportedModelError
from edgeprune.models.base import REGISTRY, ModelAdapter, RowBlock, TransformerLayer, encoder_macs


def adapter_for_type(model_type: str) -> ModelAdapter:
    try:
        return REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"no pruning adapter for architecture '{model_type}' (supported: {', '.join(sorted(REGISTRY))})",
            "use a model of a supported family, or add one: a ModelAdapter subclass decorated with @register in "
            "a new file in edgeprune/models/adapters/",
        ) from None


def adapter_for(model: nn.Module) -> ModelAdapter:
    config = getattr(model, "config", None)
    return adapter_for_type(getattr(config, "model_type", type(model).__name__))


__all__ = ["REGISTRY", "ModelAdapter", "RowBlock", "TransformerLayer", "adapter_for", "adapter_for_type",
           "encoder_macs"]
