"""Channel pruning of CNNs: coupled groups found by tracing, physical slicing, scores, allocation, recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import PlanError, UnsupportedModelError
from edgeprune.models.conv import channel_graph, input_hooks, layer_macs
from edgeprune.pruning.channels import (
    ChannelPlan,
    apply_channel_plan,
    channel_multiple,
    channel_scores,
    prune_channels,
)
from edgeprune.pruning.conv_recover import reestimate_batchnorm
from edgeprune.pruning.importance import Accumulation


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, 4, 1)
        self.expand = nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return x * gate


class Block(nn.Module):
    """Inverted residual: expand 1×1 → depthwise 3×3 → SE → project 1×1, plus the skip connection."""

    def __init__(self, channels: int, expanded: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(channels, expanded, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(expanded)
        self.depthwise = nn.Conv2d(expanded, expanded, 3, padding=1, groups=expanded, bias=False)
        self.bn1 = nn.BatchNorm2d(expanded)
        self.se = SqueezeExcite(expanded)
        self.project = nn.Conv2d(expanded, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.depthwise(torch.relu(self.bn0(self.expand(x))))))
        return x + self.bn2(self.project(self.se(y)))


class ResidualCNN(nn.Module):
    """Stem, two residual blocks sharing one stream, a concatenation of two branches, a classifier on
    flattened 2×2 features (so each channel feeds four classifier inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(Block(16, 48), Block(16, 48))
        self.left = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.right = nn.Conv2d(16, 8, 1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(32 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem_bn(self.stem(x))))
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.classifier(torch.flatten(self.pool(x), 1))


@pytest.fixture()
def cnn() -> ResidualCNN:
    torch.manual_seed(0)
    model = ResidualCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics and scales
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model.eval()


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def masked_output(model: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The dense model with the removed units' channels zeroed wherever they are read."""
    graph = channel_graph(model, x[:1])
    padded = torch.cat([keep.float(), torch.ones(1)])

    def zero(name: str, t: torch.Tensor) -> torch.Tensor:
        m = padded[graph.slots[(name, "in")]]
        return t * m.view(1, -1, *([1] * (t.dim() - 2)))

    with torch.no_grad(), input_hooks(model, graph.consumers(), zero):
        return model(x)


def test_graph_couples_residual_depthwise_se_and_concat(cnn) -> None:
    graph = channel_graph(cnn, images(1))
    spaces = {space.name: len(space.units) for space in graph.spaces}
    # the stream (stem + both projects, joined by the adds), each block's expanded channels (expand, depthwise,
    # SE gate), each SE bottleneck, and both concat branches; the classifier's outputs are never pruned
    assert spaces == {"stem": 16, "blocks.0.expand": 48, "blocks.0.se.reduce": 4, "blocks.1.expand": 48,
                      "blocks.1.se.reduce": 4, "left": 24, "right": 8}
    stream = graph.slots[("stem", "out")]
    assert torch.equal(graph.slots[("blocks.0.project", "out")], stream)
    assert torch.equal(graph.slots[("blocks.1.project", "out")], stream)
    expanded = graph.slots[("blocks.0.expand", "out")]
    for key in (("blocks.0.depthwise", "dw"), ("blocks.0.se.expand", "out"), ("blocks.0.project", "in")):
        assert torch.equal(graph.slots[key], expanded)
    classifier_in = graph.slots[("classifier", "in")]
    assert len(classifier_in) == 128 and torch.equal(classifier_in[:4], graph.slots[("left", "out")][:1].repeat(4))
    assert bool((graph.slots[("classifier", "out")] < 0).all())
    assert bool((graph.slots[("stem", "in")] < 0).all())


def test_pruned_model_equals_masked_dense_model(cnn) -> None:
    x = images()
    pruned, plan = prune_channels(cnn, x[:1], keep_ratio=0.5, multiple=1)
    graph = channel_graph(cnn, x[:1])
    keep = plan.keep_mask(graph)
    assert 0 < int(keep.sum()) < graph.num_units
    with torch.no_grad():
        actual = pruned(x)
    torch.testing.assert_close(actual, masked_output(cnn, x, keep), atol=1e-5, rtol=1e-5)
    block = pruned.blocks[0]
    assert block.depthwise.groups == block.depthwise.in_channels == block.depthwise.out_channels == 24
    assert block.se.expand.out_channels == block.expand.out_channels == block.project.in_channels == 24
    assert pruned.stem.out_channels == pruned.blocks[1].project.out_channels == 8
    assert pruned.classifier.in_features == (12 + 4) * 4
    assert layer_macs(pruned, channel_graph(pruned, x[:1])) < 0.4 * layer_macs(cnn, graph)
    assert cnn.stem.out_channels == 16  # the input model is untouched


@pytest.mark.parametrize("criterion", ["magnitude", "l1", "activation", "taylor", "fisher"])
def test_every_criterion_prunes_to_the_flops_target(cnn, criterion) -> None:
    x = images()
    pruned, plan = prune_channels(cnn, x[:1], keep_flops=0.6, criterion=criterion, batches=x.split(4),
                                  multiple=4, allocation="global" if criterion in ("taylor", "fisher") else "uniform")
    dense_macs = layer_macs(cnn, channel_graph(cnn, x[:1]))
    kept = layer_macs(pruned, channel_graph(pruned, x[:1])) / dense_macs
    assert 0.6 <= kept < 0.8
    assert all(len(units) % 4 == 0 for units in plan.spaces.values())
    with torch.no_grad():
        assert pruned(x).shape == (8, 10)


def test_weak_channel_is_ranked_last(cnn) -> None:
    block = cnn.blocks[0]
    with torch.no_grad():  # channel 5 of the first block's expansion carries (almost) nothing anywhere
        block.expand.weight[5].mul_(1e-3)
        block.depthwise.weight[5].mul_(1e-3)
        block.project.weight[:, 5].mul_(1e-3)
        for norm in (block.bn0, block.bn1):
            norm.weight[5] = norm.bias[5] = norm.running_mean[5] = 0.0
    graph = channel_graph(cnn, images(1))
    unit = int(graph.slots[("blocks.0.expand", "out")][5])
    space = next(s for s in graph.spaces if s.name == "blocks.0.expand")
    for criterion in ("magnitude", "activation", "taylor", "fisher"):
        scores = channel_scores(cnn, graph, criterion, images().split(4))
        assert int(torch.tensor(space.units)[scores[list(space.units)].argmin()]) == unit, criterion


def test_ema_with_zero_decay_keeps_only_the_last_batch(cnn) -> None:
    graph = channel_graph(cnn, images(1))
    batches = [images(4, seed=1), images(4, seed=2)]
    ema = channel_scores(cnn, graph, "activation", batches, Accumulation("ema", 0.0))
    torch.testing.assert_close(ema, channel_scores(cnn, graph, "activation", batches[1:]))
    mean = channel_scores(cnn, graph, "activation", batches)
    assert not torch.allclose(mean, ema)


def test_lstsq_recovers_a_duplicated_channel_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(5.0)  # every channel strong except the duplicated pair
        model[0].weight[7] = model[0].weight[6] = model[0].weight[6] / 5.0
        model[0].bias[7] = model[0].bias[6]
    x = images(32)
    pruned, plan = prune_channels(model, x[:1], keep_ratio=7 / 8, multiple=1, batches=x.split(8), recovery="lstsq")
    assert len(plan.spaces["0"]) == 7
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-4, rtol=1e-4)
    assert plan.recovery["output_error_after"] < 1e-8 < plan.recovery["output_error_before"]


def test_bn_reestimation_and_lstsq_lower_the_output_error() -> None:
    """Removing half the (positive) channels a BatchNorm reads halves its input mean: the stored statistics
    then mis-normalize, which re-estimation or a re-fit of the reading conv corrects."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False),
                          nn.BatchNorm2d(8)).eval()
    with torch.no_grad():
        model[2].weight.abs_()
    x = images(32)
    reestimate_batchnorm(model, x.split(8))  # dense statistics that match the data, as a trained model's would
    for method in ("bn", "lstsq"):
        _, plan = prune_channels(model, x[:1], keep_ratio=0.5, multiple=1, batches=x.split(8), recovery=method)
        assert plan.recovery["method"] == method
        assert plan.recovery["output_error_after"] < 0.5 * plan.recovery["output_error_before"], method
    assert plan.recovery["refit"] == {"tried": 1, "refit": 1}


def test_lstsq_lowers_the_output_error_of_a_residual_cnn(cnn) -> None:
    x = images(32)
    _, plan = prune_channels(cnn, x[:1], keep_ratio=0.5, multiple=1, batches=x.split(8), recovery="lstsq")
    assert plan.recovery["refit"]["refit"] > 0
    assert plan.recovery["output_error_after"] < 0.5 * plan.recovery["output_error_before"]


def test_plan_round_trips_and_rebuilds_the_architecture(cnn, tmp_path) -> None:
    x = images()
    pruned, plan = prune_channels(cnn, x[:1], keep_flops=0.5, criterion="activation", batches=x.split(4))
    plan.save(tmp_path / "plan.json")
    loaded = ChannelPlan.load(tmp_path / "plan.json")
    assert loaded == plan
    rebuilt = apply_channel_plan(cnn, x[:1], loaded)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), pruned(x))


def test_pruning_is_deterministic_under_a_seed(cnn) -> None:
    x = images()
    a, _ = prune_channels(cnn, x[:1], keep_flops=0.5, criterion="fisher", batches=x.split(4), seed=3)
    b, _ = prune_channels(cnn, x[:1], keep_flops=0.5, criterion="fisher", batches=x.split(4), seed=3)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def test_untraceable_module_is_named_in_the_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), DataDependent(), nn.Conv2d(8, 4, 1))
    with pytest.raises(UnsupportedModelError, match=r"'?1 \(DataDependent\)"):
        prune_channels(model, images(1), keep_ratio=0.5)


def test_bad_targets_and_options_are_refused(cnn) -> None:
    x = images(1)
    with pytest.raises(PlanError, match="exactly one"):
        prune_channels(cnn, x)
    with pytest.raises(PlanError, match="outside"):
        prune_channels(cnn, x, keep_flops=1.5)
    with pytest.raises(PlanError, match="calibration images"):
        prune_channels(cnn, x, keep_ratio=0.5, recovery="bn")
    with pytest.raises(PlanError, match="unknown channel importance"):
        prune_channels(cnn, x, keep_ratio=0.5, criterion="entropy")
    with pytest.raises(PlanError, match="needs calibration"):
        prune_channels(cnn, x, keep_ratio=0.5, criterion="taylor")
    with pytest.raises(PlanError, match="bn_scale needs a BatchNorm"):  # the SE bottleneck has none
        prune_channels(cnn, x, keep_ratio=0.5, criterion="bn_scale")


def test_channel_multiple_follows_the_isa() -> None:
    assert channel_multiple(["avx2", "avx512f", "avx512_vnni"]) == 16
    assert channel_multiple(["neon", "dotprod"]) == 8
    assert channel_multiple(["avx2"]) == 8
    assert channel_multiple([]) == 1


def test_vae_encoder_pruning_leaves_the_decoder_whole() -> None:
    from edgeprune.models.vae import ConvVAE, load_digits_images, psnr, reconstruction_loss, train_vae

    digits = load_digits_images()
    model = ConvVAE(width=16, latent=4)
    history = train_vae(model, digits[:512], epochs=3)
    assert history[-1] < history[0]
    calibration = digits[512:640].split(32)
    pruned, plan = prune_channels(model, digits[:1], keep_flops=0.5, within="encoder", criterion="taylor",
                                  loss=reconstruction_loss, batches=calibration,
                                  accumulation=Accumulation("ema", 0.9), recovery="lstsq")
    assert set(plan.spaces) == {"encoder.0", "encoder.3", "encoder.6"}
    assert pruned.encoder[3].out_channels < 32
    dense_decoder = {k: v.shape for k, v in model.decoder.state_dict().items()}
    assert {k: v.shape for k, v in pruned.decoder.state_dict().items()} == dense_decoder
    test = digits[1400:1600]
    with torch.no_grad():
        drop = psnr(model(test), test) - psnr(pruned(test), test)
    assert np.isfinite(drop) and drop < 3.0
