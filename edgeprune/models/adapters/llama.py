"""Decoder LLMs of the Llama layout: Llama, Qwen2, Mistral (pre-norm, grouped-query attention,
gated MLP, optional q/k/v biases as in Qwen2).

An attention unit is one key/value head with the query heads that share it, so every layer
keeps ``num_attention_heads / num_key_value_heads`` query heads per key/value head and the
attention ``forward`` (which reshapes by ``head_dim``) needs no other change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgeprune.models.base import PRE_NORM, ModelAdapter, RowBlock, TransformerLayer, register


@register
class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama", "qwen2", "mistral")
    residual = PRE_NORM
    uniform_attention = True

    def layers(self, model: nn.Module) -> list[TransformerLayer]:
        result = []
        for layer in model.base_model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            head_dim, group = attention.head_dim, attention.num_key_value_groups
            result.append(TransformerLayer(
                block=layer, attention=attention,
                attn_in=(RowBlock(attention.q_proj, head_dim * group), RowBlock(attention.k_proj, head_dim),
                         RowBlock(attention.v_proj, head_dim)),
                attn_out=attention.o_proj,
                ffn_in=(RowBlock(mlp.gate_proj, 1), RowBlock(mlp.up_proj, 1)), ffn_out=mlp.down_proj,
                attn_sum=layer.post_attention_layernorm, ffn_sum=None, head_dim=head_dim, group_size=group))
        return result

    def set_num_heads(self, layer: TransformerLayer, num_units: int) -> None:
        """Nothing to update: the forward reshapes by head_dim and the query/key-value ratio is unchanged."""

    def add_output_biases(self, model: nn.Module) -> None:
        """Llama's config switches biases on per module kind (``attention_bias``: q, k, v, o; ``mlp_bias``: gate,
        up, down), so all of them get one, zero except where compensation writes. Qwen2 and Mistral hard-code
        o_proj and down_proj without a bias: refused by the base class."""
        config = model.config
        if config.model_type != "llama":
            return super().add_output_biases(model)
        config.attention_bias = config.mlp_bias = True
        for layer in model.base_model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                           mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                if linear.bias is None:
                    linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))

    def auto_class(self, config: dict[str, Any]) -> tuple[type, str]:
        from transformers import AutoModel, AutoModelForCausalLM

        if any(name.endswith("ForCausalLM") for name in config.get("architectures") or []):
            return AutoModelForCausalLM, "text-generation-with-past"
        return AutoModel, "feature-extraction"

    def label_free(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> bool:
        return "labels" not in batch and not hasattr(model, "lm_head")

    def sensitivity_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The language-model loss when the model has a head: next-token labels come free with any text."""
        if "labels" in batch or self.label_free(model, batch):
            return super().sensitivity_loss(model, batch)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return model(**batch, labels=labels).loss
