"""Calibration images for users who have none, synthesized from a classifier's BatchNorm statistics.

DeepInversion (Yin et al., CVPR 2020): every BatchNorm layer stores the running mean and
variance of its input over the training set. Random inputs are optimized so that, in a batch,
each BatchNorm's input has those statistics, while the classifier assigns each image a chosen
class (cross-entropy) and the image stays smooth (total variation) and bounded (L2). The images
are not photographs, but they excite the network the way its training data did, which is what
distillation needs. The cost is the price: each batch is ``steps`` forward and backward passes
of the dense model (benchmarks/cnn.py states the minutes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.errors import EdgepruneError

Tick = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthesisOptions:
    count: int = 128
    size: int = 128
    """Side of the square images. Below the model's input size (224 for ImageNet models) to save time: a step of 32
    images at 128 px took ~1 s on 2 AMD EPYC cores, and distillation crops and resizes them anyway."""
    batch_size: int = 32
    steps: int = 80
    """Optimizer steps per batch: on EfficientNet-Lite0 80 steps bring a batch's BatchNorm-statistics gap from 2.3x
    to 1.3x that of real images."""
    lr: float = 0.25
    bn_weight: float = 1.0
    class_weight: float = 0.05
    tv_weight: float = 1e-4
    l2_weight: float = 1e-5
    jitter: int = 16
    """Random shifts (pixels) and flips each step, so the images do not overfit to one alignment."""
    classes: int | None = None
    """Number of classes to draw targets from (None: the model's output width)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("count", "size", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise EdgepruneError(f"image synthesis {name} {getattr(self, name)} is not positive",
                                     f"pass a positive {name}")


@dataclass
class Synthesized:
    images: torch.Tensor
    """(count, 3, size, size), in the model's normalized input space."""
    bn_loss_first_last: tuple[float, float]
    """The BatchNorm-statistics loss of the first batch at its first and last step."""
    bn_layers: int


DEFAULTS = SynthesisOptions()


def synthesize_images(model: nn.Module, options: SynthesisOptions = DEFAULTS,
                      tick: Tick | None = None) -> Synthesized:
    """``options.count`` images whose batch statistics match every BatchNorm's running statistics in ``model``
    (unchanged: eval mode, no parameter is trained)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise EdgepruneError("data-free synthesis needs BatchNorm layers (their statistics are the data), and the "
                             "model has none", "pass a folder of images instead")
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(options.seed)
    batches, first_last = [], (0.0, 0.0)
    total = math.ceil(options.count / options.batch_size) * options.steps
    try:
        for b in range(math.ceil(options.count / options.batch_size)):
            n = min(options.batch_size, options.count - b * options.batch_size)
            images, losses = _synthesize_batch(model, norms, n, options, generator,
                                               lambda step, b=b: tick and tick(b * options.steps + step, total))
            batches.append(images)
            if b == 0:
                first_last = losses
    finally:
        for p, flag in zip(model.parameters(), requires):
            p.requires_grad_(flag)
    return Synthesized(torch.cat(batches), first_last, len(norms))


def _synthesize_batch(model: nn.Module, norms: list[nn.Module], n: int, options: SynthesisOptions,
                      generator: torch.Generator, tick: Callable[[int], object]) -> tuple[torch.Tensor, tuple]:
    images = torch.randn(n, 3, options.size, options.size, generator=generator).requires_grad_(True)
    statistics: list[torch.Tensor] = []

    handles = [m.register_forward_hook(lambda module, args, _out: statistics.append(_gap(module, args[0])))
               for m in norms]
    optimizer = torch.optim.Adam([images], lr=options.lr, betas=(0.5, 0.9))
    targets = None
    first = last = 0.0
    try:
        for step in range(options.steps):
            statistics.clear()
            dx, dy = (int(torch.randint(-options.jitter, options.jitter + 1, (1,), generator=generator))
                      for _ in range(2))
            x = torch.roll(images, shifts=(dx, dy), dims=(2, 3))
            if float(torch.rand(1, generator=generator)) < 0.5:
                x = x.flip(-1)
            logits = model(x)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            if targets is None:
                classes = options.classes or logits.shape[1]
                targets = torch.randint(classes, (n,), generator=generator)
            bn = torch.stack(statistics).sum()
            loss = (options.bn_weight * bn + options.class_weight * F.cross_entropy(logits, targets)
                    + options.tv_weight * _total_variation(images) + options.l2_weight * images.pow(2).sum() / n)
            for group in optimizer.param_groups:
                group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / options.steps))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            last = float(bn.detach())
            first = last if step == 0 else first
            tick(step + 1)
    finally:
        for handle in handles:
            handle.remove()
    return images.detach(), (round(first, 4), round(last, 4))


def _gap(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """‖batch mean − running mean‖ + ‖batch variance − running variance‖ of a BatchNorm's input ``x``."""
    dims = [0, *range(2, x.dim())]
    return (x.mean(dims) - norm.running_mean).norm() + (x.var(dims, unbiased=False) - norm.running_var).norm()


def _total_variation(images: torch.Tensor) -> torch.Tensor:
    return ((images[:, :, 1:] - images[:, :, :-1]).abs().sum()
            + (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum())


def bn_statistics_gap(model: nn.Module, images: torch.Tensor) -> float:
    """Σ over BatchNorm layers of ‖batch mean − running mean‖ + ‖batch var − running var‖ on ``images``: how far
    a batch is from the statistics the model was trained on."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    gaps: list[float] = []
    handles = [m.register_forward_hook(lambda module, args, _out: gaps.append(float(_gap(module, args[0]))))
               for m in norms]
    try:
        with torch.no_grad():
            model.eval()
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return sum(gaps)
