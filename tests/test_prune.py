from __future__ import annotations

import torch

from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel, load_model, load_pruned, save_pruned
from edgeprune.options import PruneOptions
from edgeprune.pruning import kept_macs_fraction, make_plan, prune
from edgeprune.pruning.importance import magnitude

WEIGHTS_ONLY = PruneOptions(criterion="magnitude", recover="none")

TEXTS = ["A man is playing a guitar.", "The cat sleeps.", "Stocks fell sharply after the bank raised rates today."]


def _inputs(tokenizer) -> dict[str, torch.Tensor]:
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def test_prune_returns_new_model_and_keeps_input(tiny_bert_dir) -> None:
    dense = load_model(tiny_bert_dir)
    before = {k: v.clone() for k, v in dense.model.state_dict().items()}
    pruned, plan = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.25, options=WEIGHTS_ONLY)
    assert plan.kept_heads == [3, 3, 3] and plan.kept_neurons == [24, 24, 24]
    assert all(torch.equal(before[k], v) for k, v in dense.model.state_dict().items())
    assert pruned is not dense.model
    assert 0.2 < kept_macs_fraction(pruned, plan.dense) < 0.5


def test_keep_flops_and_minimum_of_one_head(tiny_bert_dir) -> None:
    dense = load_model(tiny_bert_dir)
    plan = make_plan(dense.model, keep_flops=0.5)
    assert plan.kept_heads == [3, 3, 3] and plan.kept_neurons == [48, 48, 48]
    pruned, plan = prune(dense.model, heads_ratio=0.01, ffn_ratio=0.001, options=WEIGHTS_ONLY)
    assert plan.kept_heads == [1, 1, 1] and plan.kept_neurons == [1, 1, 1]
    with torch.no_grad():
        assert pruned(**_inputs(dense.processor))[0].shape[-1] == 48


def test_magnitude_ranks_planted_dead_units_last(tiny_bert_dir) -> None:
    model = load_model(tiny_bert_dir).model
    layer = adapter_for(model).layers(model)[1]
    with torch.no_grad():
        layer.attn_out.weight[:, 2 * layer.head_dim:3 * layer.head_dim] = 0  # head 2 writes nothing
        layer.ffn_in[0].linear.weight[17] = 0  # neuron 17 never activates
    scores = magnitude(model, adapter_for(model))[1]
    assert int(scores.heads.argmin()) == 2
    assert int(scores.neurons.argmin()) == 17
    plan = make_plan(model, heads_ratio=5 / 6, ffn_ratio=95 / 96)
    assert 2 not in plan.layers[1].heads and 17 not in plan.layers[1].neurons


def test_save_then_load_pruned_gives_identical_outputs(tiny_classifier_dir, tmp_path) -> None:
    dense = load_model(tiny_classifier_dir)
    pruned, plan = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, options=WEIGHTS_ONLY)
    out = save_pruned(LoadedModel(pruned, dense.processor, dense.path, dense.task, dense.pooling, plan),
                      tmp_path / "pruned")
    reloaded = load_pruned(out)
    assert reloaded.plan == plan and reloaded.task == "text-classification"
    assert load_model(out).plan == plan  # a pruned directory is recognized by load_model too
    inputs = _inputs(dense.processor)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(**inputs).logits, pruned(**inputs).logits, atol=0, rtol=0)
    assert not (out / "pytorch_model.bin").exists()  # weights are safetensors only: no pickle
