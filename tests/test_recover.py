from __future__ import annotations

import copy

import pytest
import torch

from edgeprune.errors import BadArgumentError, PlanError
from edgeprune.models import adapter_for
from edgeprune.models.loading import LoadedModel, load_model, load_pruned, save_pruned
from edgeprune.models.plan import LayerPlan, PruningPlan
from edgeprune.models.slicing import dense_shape
from edgeprune.options import PruneOptions
from edgeprune.pruning import apply_plan, make_plan, prune
from edgeprune.pruning.calibration import calibration_batches
from edgeprune.pruning.recover import distill, least_squares, recover


def _with_duplicates(path):
    """Layer 0: head 1 is a copy of head 0 (same Q/K/V), FFN neuron 5 a copy of neuron 3."""
    loaded = load_model(path)
    layer = adapter_for(loaded.model).layers(loaded.model)[0]
    d = layer.head_dim
    with torch.no_grad():
        for linear in (block.linear for block in layer.attn_in):
            linear.weight[d:2 * d] = linear.weight[:d]
            linear.bias[d:2 * d] = linear.bias[:d]
        up = layer.ffn_in[0].linear
        up.weight[5] = up.weight[3]
        up.bias[5] = up.bias[3]
    return loaded


def _drop_duplicates(loaded) -> PruningPlan:
    shape = dense_shape(loaded.model, adapter_for(loaded.model))
    every = LayerPlan(tuple(range(shape.num_heads)), tuple(range(shape.ffn_dim)))
    first = LayerPlan(tuple(h for h in range(shape.num_heads) if h != 1),
                      tuple(n for n in range(shape.ffn_dim) if n != 5))
    return PruningPlan(layers=(first,) + (every,) * (shape.num_layers - 1), dense=shape)


def _outputs(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b)[0][b["attention_mask"].bool()] for b in batches])


def test_least_squares_exactly_recovers_a_redundant_duplicated_head_and_neuron(calibration_texts,
                                                                               tiny_bert_dir) -> None:
    dense = _with_duplicates(tiny_bert_dir)
    adapter = adapter_for(dense.model)
    pruned = apply_plan(copy.deepcopy(dense.model), adapter, _drop_duplicates(dense))
    batches = calibration_batches(dense.processor, calibration_texts, batch_size=4)
    reference = _outputs(dense.model, batches)
    before = (_outputs(pruned, batches) - reference).abs().max()
    fits = least_squares(dense.model, pruned, adapter, batches)
    after = (_outputs(pruned, batches) - reference).abs().max()
    assert before > 1e-2, "dropping a duplicate without re-fitting must change the output"
    assert after < 1e-4, (before, after)
    assert fits[0].damping is not None and fits[0].error_after < 1e-6 < fits[0].error_before
    assert fits[1].error_after < 1e-6 < fits[1].error_before
    # The kept copy now carries both: its output columns are the sum of the two originals.
    dense_out = adapter.layers(dense.model)[0].ffn_out.weight
    kept_out = adapter.layers(pruned)[0].ffn_out.weight
    torch.testing.assert_close(kept_out[:, 3], dense_out[:, 3] + dense_out[:, 5], atol=1e-3, rtol=0)


def test_least_squares_lowers_held_aside_error_and_keeps_weights_that_cannot_improve(calibration_texts,
                                                                                     tiny_bert_dir) -> None:
    dense = load_model(tiny_bert_dir)
    batches = calibration_batches(dense.processor, calibration_texts, batch_size=2)
    pruned, plan = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, batches=batches,
                         options=PruneOptions(criterion="magnitude", recover="lstsq"))
    assert plan.recovery["method"] == "lstsq" and plan.recovery["projections"] == 6
    assert plan.recovery["held_out_error_after"] < plan.recovery["held_out_error_before"]
    unpruned = apply_plan(copy.deepcopy(dense.model), adapter_for(dense.model),
                          PruningPlan(layers=tuple(LayerPlan(tuple(range(6)), tuple(range(96))) for _ in range(3)),
                                      dense=plan.dense))
    fits = least_squares(dense.model, unpruned, adapter_for(dense.model), batches)
    assert all(f.error_before < 1e-10 for f in fits)  # nothing removed: the dense weights are already exact


def test_recovered_model_saves_and_loads_with_its_plan(calibration_texts, tiny_bert_dir, tmp_path) -> None:
    dense = load_model(tiny_bert_dir)
    batches = calibration_batches(dense.processor, calibration_texts, batch_size=4)
    pruned, plan = prune(dense.model, keep_flops=0.5, batches=batches,
                         options=PruneOptions(criterion="activation", recover="lstsq"))
    save_pruned(LoadedModel(pruned, dense.processor, dense.path, dense.task, dense.pooling, plan), tmp_path / "p")
    loaded = load_pruned(tmp_path / "p")
    assert loaded.plan.recovery == plan.recovery
    torch.testing.assert_close(_outputs(loaded.model, batches), _outputs(pruned, batches))


def test_distillation_lowers_its_loss_and_is_deterministic(calibration_texts, tiny_bert_dir) -> None:
    dense = load_model(tiny_bert_dir)
    batches = calibration_batches(dense.processor, calibration_texts, batch_size=4)
    runs = []
    for _ in range(2):
        pruned, _ = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5,
                          options=PruneOptions(criterion="magnitude", recover="none"))
        first, last = distill(dense.model, pruned, batches, steps=30, lr=1e-3, seed=3)
        runs.append((first, last, _outputs(pruned, batches)))
    assert runs[0][1] < 0.5 * runs[0][0]
    assert runs[0][:2] == runs[1][:2]
    torch.testing.assert_close(runs[0][2], runs[1][2], rtol=0, atol=0)


def test_distillation_of_a_classifier_matches_the_teachers_logits(calibration_texts, tiny_classifier_dir) -> None:
    dense = load_model(tiny_classifier_dir)
    batches = calibration_batches(dense.processor, calibration_texts, batch_size=4)
    pruned, plan = prune(dense.model, heads_ratio=0.5, ffn_ratio=0.5, batches=batches,
                         options=PruneOptions(criterion="magnitude", recover="distill", distill_steps=20))
    first, last = plan.recovery["distill_loss_first_last"]
    assert plan.recovery["distill_steps"] == 20 and last < first


def test_recovery_needs_calibration_and_a_known_method(calibration_texts, tiny_bert_dir) -> None:
    dense = load_model(tiny_bert_dir)
    with pytest.raises(PlanError, match="calibration"):
        prune(dense.model, keep_flops=0.5, options=PruneOptions(criterion="magnitude", recover="lstsq"))
    with pytest.raises(BadArgumentError, match="unknown --recover"):
        PruneOptions(recover="retrain")
    with pytest.raises(PlanError, match="distill-steps"):
        recover(dense.model, copy.deepcopy(dense.model), adapter_for(dense.model),
                calibration_batches(dense.processor, calibration_texts[:4]), "distill",
                make_plan(dense.model, keep_flops=0.5), distill_steps=0)
    with pytest.raises(PlanError, match="at least 2 calibration batches"):
        recover(dense.model, copy.deepcopy(dense.model), adapter_for(dense.model),
                calibration_batches(dense.processor, calibration_texts[:4]), "lstsq",
                make_plan(dense.model, keep_flops=0.5))
