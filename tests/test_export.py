from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeprune import runtime
from edgeprune.errors import ExportError
from edgeprune.exporting import export
from edgeprune.models.loading import LoadedModel, load_model
from edgeprune.options import PruneOptions
from edgeprune.pruning import prune


def test_export_parity_and_dynamic_axes(tiny_bert_dir, tiny_onnx) -> None:
    loaded = load_model(tiny_bert_dir)
    sess = runtime.session(tiny_onnx)
    for batch, seq in ((1, 5), (3, 17), (2, 64)):
        arrays = runtime.synthetic_feed(sess, batch, seq)
        arrays["attention_mask"][0, seq // 2:] = 0
        actual = sess.run(None, arrays)[0]
        with torch.no_grad():
            expected = loaded.model(**{k: torch.from_numpy(v) for k, v in arrays.items()})[0].numpy()
        assert actual.shape == (batch, seq, 48)
        np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_pruned_export_loads_with_optimum(tiny_classifier_dir, tmp_path) -> None:
    from optimum.onnxruntime import ORTModelForSequenceClassification

    dense = load_model(tiny_classifier_dir)
    pruned, plan = prune(dense.model, heads_ratio=0.34, ffn_ratio=0.5,
                         options=PruneOptions(criterion="magnitude", recover="none"))
    loaded = LoadedModel(pruned, dense.processor, dense.path, dense.task, dense.pooling, plan)
    result = export(loaded, tmp_path / "onnx")
    assert result.max_abs_diff < 1e-4 and result.parity_texts > 10
    assert (tmp_path / "onnx" / "pruning_plan.json").is_file()
    ort_model = ORTModelForSequenceClassification.from_pretrained(tmp_path / "onnx")
    inputs = dense.processor(["edge devices", "a longer sentence about phones"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ort_model(**inputs).logits, pruned(**inputs).logits, atol=1e-4, rtol=1e-4)


def test_failed_parity_writes_nothing(tiny_bert_dir, tmp_path) -> None:
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export(tiny_bert_dir, tmp_path / "onnx", atol=-1.0)
    assert list(tmp_path.iterdir()) == []
