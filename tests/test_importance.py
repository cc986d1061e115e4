from __future__ import annotations

import pytest
import torch

from edgeprune.errors import PlanError
from edgeprune.models import adapter_for
from edgeprune.models.loading import load_model
from edgeprune.pruning import make_plan
from edgeprune.pruning.calibration import calibration_batches
from edgeprune.pruning.importance import CRITERIA, Accumulation, LayerScores, activation


def _planted(path):
    """A model with head 2 of layer 1 writing nothing and FFN neuron 17 of layer 1 never active."""
    loaded = load_model(path)
    layer = adapter_for(loaded.model).layers(loaded.model)[1]
    with torch.no_grad():
        layer.attn_out.weight[:, 2 * layer.head_dim:3 * layer.head_dim] = 0
        layer.ffn_in[0].linear.weight[17] = 0
        layer.ffn_in[0].linear.bias[17] = -30.0  # GELU(-30) == 0: the neuron is dead on every input
    return loaded


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_every_criterion_ranks_planted_dead_units_last(calibration_texts, tiny_bert_dir, name) -> None:
    loaded = _planted(tiny_bert_dir)
    texts = calibration_texts[:8]
    batches = calibration_batches(loaded.processor, texts, batch_size=4)
    scores = CRITERIA[name](loaded.model, adapter_for(loaded.model), batches, Accumulation("ema", 0.5))[1]
    assert int(scores.heads.argmin()) == 2, scores.heads
    assert int(scores.neurons.argmin()) == 17
    assert float(scores.heads.min()) < 1e-6 * float(scores.heads.max()) + 1e-12
    plan = make_plan(loaded.model, heads_ratio=5 / 6, ffn_ratio=95 / 96, criterion=name, batches=batches)
    assert 2 not in plan.layers[1].heads and 17 not in plan.layers[1].neurons
    assert plan.criterion == name and plan.calibration_texts == (0 if name == "magnitude" else len(texts))


def test_taylor_uses_the_task_loss_when_labels_are_given(calibration_texts, tiny_classifier_dir) -> None:
    loaded = _planted(tiny_classifier_dir)
    batches = calibration_batches(loaded.processor, calibration_texts[:8], batch_size=4)
    for batch in batches:
        batch["labels"] = torch.arange(len(batch["input_ids"])) % 3
    scores = CRITERIA["taylor"](loaded.model, adapter_for(loaded.model), batches, Accumulation())
    assert int(scores[1].heads.argmin()) == 2 and all(float(s.heads.sum()) > 0 for s in scores)


def test_ema_with_decay_zero_equals_the_last_batch(calibration_texts, tiny_bert_dir) -> None:
    loaded = load_model(tiny_bert_dir)
    adapter = adapter_for(loaded.model)
    batches = calibration_batches(loaded.processor, calibration_texts[:8], batch_size=3)
    ema = activation(loaded.model, adapter, batches, Accumulation("ema", 0.0))
    last = activation(loaded.model, adapter, batches[-1:], Accumulation())
    for a, b in zip(ema, last):
        torch.testing.assert_close(a.heads, b.heads)
        torch.testing.assert_close(a.neurons, b.neurons)


def test_accumulation_arithmetic() -> None:
    batches = [[LayerScores(torch.tensor([float(v)]), torch.tensor([2.0 * v]))] for v in (1, 2, 6)]
    mean = Accumulation("sum").fold(iter(batches))[0]
    assert mean.heads.item() == pytest.approx(3.0) and mean.neurons.item() == pytest.approx(6.0)
    ema = Accumulation("ema", 0.5).fold(iter(batches))[0]
    assert ema.heads.item() == pytest.approx(0.5 * (0.5 * 1 + 0.5 * 2) + 0.5 * 6)
    with pytest.raises(PlanError, match="decay"):
        Accumulation("ema", 1.0)
    with pytest.raises(PlanError, match="calibration"):
        Accumulation().fold(iter([]))
